"""Liveness over real hosts: membership and election agree, a dead peer is noticed within 3 s, and lost
profiles only delay a peer being known."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from net_helpers import profile

from swarm.net.host import open_host
from swarm.net.liveness import LivenessConfig, run_liveness
from swarm.net.pubsub import TOPIC_PROFILE, open_gossip
from swarm.proto.membership import PeerJoined, PeerLeft

CHILD = Path(__file__).with_name("peer_child.py")


async def run_peer(config, *, task_status=trio.TASK_STATUS_IGNORED):
    async with open_host(config) as host, open_gossip(host) as gossip:
        live = await host.nursery.start(run_liveness, host, gossip, profile(host.peer_id))
        task_status.started((host, live))
        await trio.sleep_forever()


async def wait_for(predicate, timeout_s: float) -> float:
    """Seconds until predicate() is true; fails the test after timeout_s."""
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - start


def test_three_peers_agree_on_members_and_coordinator_then_survive_its_exit(host_config):
    async def main():
        async with trio.open_nursery() as nursery:
            scopes, peers = [], []
            for _ in range(3):
                scope = trio.CancelScope()
                scopes.append(scope)

                async def one(scope=scope, config=host_config(), *, task_status=trio.TASK_STATUS_IGNORED):
                    with scope:
                        await run_peer(config, task_status=task_status)

                peers.append(await nursery.start(one))
            hosts = [h for h, _ in peers]
            for i, host in enumerate(hosts):
                for other in hosts[i + 1:]:
                    await host.dial(other.addrs[0])
            ids = sorted(h.peer_id for h in hosts)
            lives = [live for _, live in peers]
            await wait_for(lambda: all(live.membership.member_ids == tuple(ids) for live in lives), 10)
            await wait_for(lambda: all(live.election.coordinator_id == ids[0] for live in lives), 10)
            assert len({live.election.term for live in lives}) == 1
            # the coordinator leaves: the others see it go and elect the next lowest id, in a higher term
            first = next(i for i, h in enumerate(hosts) if h.peer_id == ids[0])
            old_term = lives[first].election.term
            scopes[first].cancel()
            rest = [live for i, live in enumerate(lives) if i != first]
            took_s = await wait_for(lambda: all(ids[0] not in live.membership.member_ids for live in rest), 3)
            assert took_s < 3
            await wait_for(lambda: all(live.election.coordinator_id == ids[1] for live in rest), 3)
            assert {live.election.term for live in rest} == {old_term + 1}
            nursery.cancel_scope.cancel()

    trio.run(main)


class Events:
    """Everything a Liveness reported so far (drained from its channel on each look)."""

    def __init__(self, live) -> None:
        self.live = live
        self.seen: list = []

    def any(self, kind: type, peer_id: str | None = None) -> bool:
        while True:
            try:
                self.seen.append(self.live.events.receive_nowait())
            except trio.WouldBlock:
                break
        return any(isinstance(e, kind) and peer_id in (None, e.peer_id) for e in self.seen)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_killed_or_frozen_peer_in_a_subprocess_is_noticed_within_3_s(host_config, tmp_path, signum):
    async def main():
        with trio.fail_after(40):
            async with open_host(host_config()) as host, open_gossip(host) as gossip:
                live = await host.nursery.start(run_liveness, host, gossip, profile(host.peer_id))
                events = Events(live)
                child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "child.key"), host.addrs[0]],
                                         stdout=subprocess.PIPE, text=True)
                try:
                    await wait_for(lambda: events.any(PeerJoined), 30)
                    child_id = next(e.peer_id for e in events.seen if isinstance(e, PeerJoined))
                    os.kill(child.pid, signum)
                    took_s = await wait_for(lambda: events.any(PeerLeft, child_id), 3)
                    assert took_s < 3
                finally:
                    child.kill()
                    child.wait(timeout=5)

    trio.run(main)


def test_lost_profiles_only_delay_a_peer_being_known(host_config):
    """Gossip may lose a message; profiles are re-published, so a peer is learnt later, never missed."""
    num_lost = 3

    async def main():
        with trio.fail_after(30):
            config = LivenessConfig(profile_interval_s=1.0)
            async with open_host(host_config()) as a, open_host(host_config()) as b, open_gossip(a) as ga, \
                    open_gossip(b) as gb:
                lost: list[str] = []
                subscribe = gb.subscribe

                async def lossy_subscribe(topic, handler, *, types=()):
                    def drop_first_profiles(sender, msg):
                        if len(lost) < num_lost:
                            lost.append(sender)  # the network lost it: b never sees this profile
                            return None
                        return handler(sender, msg)

                    await subscribe(topic, drop_first_profiles if topic == TOPIC_PROFILE else handler, types=types)

                gb.subscribe = lossy_subscribe
                live_a = await a.nursery.start(run_liveness, a, ga, profile(a.peer_id), config)
                live_b = await b.nursery.start(run_liveness, b, gb, profile(b.peer_id), config)
                await b.dial(a.addrs[0])
                both = tuple(sorted((a.peer_id, b.peer_id)))
                await wait_for(lambda: live_a.membership.member_ids == both == live_b.membership.member_ids, 20)
                assert lost == [a.peer_id] * num_lost

    trio.run(main)
