"""The bootstrap node in-process: it serves the circuit-relay v2 hop protocol only when asked to."""

import pytest
import trio
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL

from bootstrap.node import BootstrapConfig, open_bootstrap
from swarm.net.errors import NetError
from swarm.net.host import open_host, reset_quietly


@pytest.mark.parametrize("is_relay", [True, False], ids=["relay", "no-relay"])
def test_relay_hop_protocol_is_served_only_when_enabled(host_config, is_relay):
    async def main():
        with trio.fail_after(20):
            async with open_bootstrap(BootstrapConfig(host_config(), is_relay=is_relay)) as node, \
                    open_host(host_config()) as peer:
                await peer.dial(node.addrs[0])
                if is_relay:
                    stream = await peer.open_stream(node.peer_id, str(HOP_PROTOCOL))
                    await reset_quietly(stream)
                else:
                    with pytest.raises(NetError):
                        await peer.open_stream(node.peer_id, str(HOP_PROTOCOL))

    trio.run(main)
