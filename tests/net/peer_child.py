"""A minimal peer run as a subprocess by the liveness tests: host + gossip + liveness, dialling argv[2].

Usage: python peer_child.py IDENTITY_PATH PARENT_MULTIADDR — prints its own multiaddr, then runs forever.
"""

import sys

import net_helpers
import trio

from swarm.net.host import HostConfig, open_host
from swarm.net.liveness import run_liveness
from swarm.net.pubsub import open_gossip


async def main(identity_path: str, parent_addr: str) -> None:
    config = HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), identity_path=identity_path)
    async with open_host(config) as host, open_gossip(host) as gossip:
        profile = net_helpers.profile(host.peer_id, "child")
        await host.dial(parent_addr)
        await host.nursery.start(run_liveness, host, gossip, profile)
        print(host.addrs[0], flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
