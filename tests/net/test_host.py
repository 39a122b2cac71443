"""open_host on 127.0.0.1: connecting, private-swarm keys, plaintext refused, stable identity."""

import logging
import os
import stat
import time

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from swarm.net.errors import HandshakeError, IdentityError
from swarm.net.host import open_host
from swarm.net.identity import load_or_create_identity, write_swarm_key


def test_three_hosts_with_the_same_swarm_key_connect(host_config, tmp_path):
    key = write_swarm_key(tmp_path / "swarm.key")

    async def main():
        with trio.fail_after(15):
            async with open_host(host_config(swarm_key_path=key)) as a, \
                    open_host(host_config(swarm_key_path=key)) as b, \
                    open_host(host_config(swarm_key_path=key)) as c:
                assert await b.dial(a.addrs[0]) == a.peer_id
                assert await c.dial(a.addrs[0]) == a.peer_id
                assert await c.dial(b.addrs[0]) == b.peer_id
                assert a.connected_peer_ids() == sorted([b.peer_id, c.peer_id])
                assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.addrs)

    trio.run(main)


def test_wrong_swarm_key_is_refused_within_a_few_seconds(host_config, tmp_path, caplog):
    key_a, key_b = write_swarm_key(tmp_path / "a.key"), write_swarm_key(tmp_path / "b.key")

    async def main():
        with trio.fail_after(15):
            async with open_host(host_config(swarm_key_path=key_a)) as a, \
                    open_host(host_config(swarm_key_path=key_b, dial_timeout_s=2.0)) as b:
                start = time.monotonic()
                with pytest.raises(HandshakeError, match="different swarm key"):
                    await b.dial(a.addrs[0])
                assert time.monotonic() - start < 4
                assert a.connected_peer_ids() == [] and b.connected_peer_ids() == []

    with caplog.at_level(logging.WARNING, logger="swarm.net.host"):
        trio.run(main)
    assert "handshake failed within 2 s — different swarm key?" in caplog.text


def test_plaintext_dial_is_refused(host_config):
    async def main():
        with trio.fail_after(15):
            async with open_host(host_config()) as a:
                key_pair = create_new_key_pair()
                plain = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
                async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                    info = info_from_p2p_addr(multiaddr.Multiaddr(a.addrs[0]))
                    start = time.monotonic()
                    with pytest.raises(Exception):  # noqa: B017 - libp2p raises its own negotiation errors
                        await plain.connect(info)
                    assert time.monotonic() - start < 5  # refused at negotiation, not timed out
                    assert a.connected_peer_ids() == []

    trio.run(main)


def test_identity_file_is_private_and_peer_id_stable_across_restarts(host_config, tmp_path):
    path = tmp_path / "id" / "identity.key"
    peer_ids = []

    async def main():
        for _ in range(2):
            with trio.fail_after(10):
                async with open_host(host_config(identity_path=path)) as host:
                    peer_ids.append(host.peer_id)

    trio.run(main)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert peer_ids[0] == peer_ids[1]


def test_identity_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "identity.key"
    load_or_create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(path)


def test_swarm_key_is_not_overwritten_without_force(tmp_path):
    path = write_swarm_key(tmp_path / "swarm.key")
    first = path.read_text()
    with pytest.raises(IdentityError, match="--force"):
        write_swarm_key(path)
    write_swarm_key(path, force=True)
    assert path.read_text() != first and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keep_connected_dials_again_after_a_drop(host_config):
    async def main():
        with trio.fail_after(20):
            async with open_host(host_config()) as a, open_host(host_config()) as b:
                b.nursery.start_soon(b.keep_connected, a.addrs[0])
                while a.peer_id not in b.connected_peer_ids():
                    await trio.sleep(0.05)
                await a.libp2p.disconnect(b.libp2p.get_id())
                while b.peer_id in a.connected_peer_ids():
                    await trio.sleep(0.05)
                start = time.monotonic()
                while b.peer_id not in a.connected_peer_ids():
                    await trio.sleep(0.05)
                assert time.monotonic() - start < 3

    trio.run(main)


def test_a_departed_client_is_not_redialled(host_config):
    """After a client disconnects, its addresses are forgotten, so libp2p's auto-connector (stopped too)
    has no candidate to dial and a stream to its peer id fails without a dial; an explicit dial works."""
    from swarm.net.errors import StreamError

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as server:
                network = server.libp2p.get_network()
                async with open_host(host_config()) as client:
                    client_id = client.peer_id
                    await client.dial(server.addrs[0])
                    peerstore, client_key = server.libp2p.get_peerstore(), info_from_p2p_addr(
                        multiaddr.Multiaddr(client.addrs[0])).peer_id
                    while client_key not in peerstore.peer_ids() or not peerstore.addrs(client_key):
                        await trio.sleep(0.05)  # identify has told the server where the client listens
                    await network.close_peer(client_key)  # the client is gone
                    await trio.sleep(0.1)
                assert client_key not in await network.auto_connector._get_candidate_peers()
                assert not network.auto_connector._started
                assert client_key not in peerstore.peers_with_addrs()
                with pytest.raises(StreamError):
                    await server.open_stream(client_id, "/swarm/status/1.0.0", timeout_s=2.0)
                async with open_host(host_config()) as again:
                    await server.dial(again.addrs[0])  # an explicit dial still works (addresses given)
                    assert again.peer_id in server.connected_peer_ids()

    trio.run(main)
