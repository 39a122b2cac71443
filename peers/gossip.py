"""Membership gossip: push-pull `MemberDigest` exchange with every known peer, and link measurement.

How it works: each gossip interval (sooner after a change) this peer opens `/swarm/member/1.0.0` to every
peer in its address book, writes its digest and reads the other's. The stream's peer id is authenticated
by Noise, so a digest can only speak for its sender, and the hardware profile inside is signed with the
sender's libp2p key (`swarm.net.signed`), verified once per new signature. Each digest is trimmed for
its receiver (`membership.trimmed_for`): the plan and the known addresses go only to a peer whose last
digest (the one just read, when serving) shows it lacks them. Each digest and each libp2p
disconnect is fed to the sans-IO view (`membership.SwarmView`, over `swarm.proto`); its actions are logged
in words and wake the tasks waiting for a change. Link probes time 4 MiB transfers to a few serving peers
on the path their KV would take (the fast path when it can be negotiated, else libp2p; the log says which).
"""

from __future__ import annotations

import logging
import time

import trio

from peers.kvlink import measure_gbps
from peers.membership import describe_action
from swarm.errors import SwarmError, WireError
from swarm.net.host import remote_peer_id
from swarm.net.rpc import read_message, write_message
from swarm.net.signed import open_record
from swarm.wire.hardware import HardwareProfile
from swarm.wire.requests import MemberDigest

logger = logging.getLogger(__name__)

MEMBER_PROTOCOL = "/swarm/member/1.0.0"
EXCHANGE_TIMEOUT_S = 1.5
MAX_PROBED_PEERS = 4
PROBES_PER_LINK = 3
PROBE_PAUSE_S = 0.5


async def serve_member(node, stream) -> None:
    with trio.fail_after(EXCHANGE_TIMEOUT_S):
        digest = await read_message(stream, expect=MemberDigest)
        profile = verified_profile(node, digest, remote_peer_id(stream))
        await write_message(stream, node.digest(receiver=digest))
    take_digest(node, digest, profile)
    await node.close_stream(stream)


def verified_profile(node, digest: MemberDigest, sender_id: str):
    """The digest's hardware profile once the sender and the signature check out; WireError otherwise.

    The stream's peer id is authenticated by Noise, so a digest can only speak for its own sender."""
    if digest.peer_id != sender_id:
        raise WireError(f"digest for peer {digest.peer_id} arrived from peer {sender_id}")
    record = digest.signed_profile
    if record is None:
        return None
    seen = node.verified.get(sender_id)
    if seen is not None and seen[0] == record.signature:
        return seen[1]
    profile = open_record(record, expect=HardwareProfile)
    if not record.peer_id == profile.peer_id == sender_id:
        raise WireError(f"peer {sender_id} sent a hardware profile signed for {record.peer_id}")
    node.verified[sender_id] = (record.signature, profile)
    return profile


def take_digest(node, digest: MemberDigest, profile) -> None:
    log_actions(node, node.membership.on_digest(digest, profile, time.monotonic()))
    if digest.plan is not None:
        node.offer_plan(digest.plan, digest.plan_hosts, digest.plan_term, digest.plan_coordinator_id,
                        source=f"peer {digest.peer_id}")
    node.notify()


def log_actions(node, actions: list) -> None:
    """Log what membership and election decided; a claim or a change is gossiped at once."""
    for action in actions:
        line = describe_action(action)
        if line:
            is_bad_news = " left " in line or "suspected" in line or "is gone" in line
            logger.log(logging.WARNING if is_bad_news else logging.INFO, "%s", line)
    if actions:
        node.gossip_soon.set()
        node.notify()


async def exchange(node, peer_id: str, addrs) -> None:
    """Push our digest to one peer and take its digest back; a failure only means no news from it."""
    try:
        with trio.fail_after(EXCHANGE_TIMEOUT_S):
            stream = await node.open_stream(peer_id, MEMBER_PROTOCOL)
            try:
                await write_message(stream, node.digest(receiver=last_digest(node, peer_id)))
                digest = await read_message(stream, expect=MemberDigest)
                take_digest(node, digest, verified_profile(node, digest, peer_id))
            finally:
                await node.close_stream(stream)
    except WireError as e:
        logger.warning("peer %s sent a bad digest: %s", peer_id, e)
    except (SwarmError, trio.TooSlowError) as e:
        logger.debug("no digest exchange with %s: %s", peer_id, e)
    except Exception as e:  # libp2p raises its own types for refused or reset connections
        logger.debug("no digest exchange with %s: %s: %s", peer_id, type(e).__name__, e)


def last_digest(node, peer_id: str) -> MemberDigest | None:
    """The last digest heard from `peer_id` (what it holds, as far as this peer knows), or None."""
    member = node.membership.digests.get(peer_id)
    return None if member is None else member.digest


def on_disconnect(node, peer_id: str) -> None:
    log_actions(node, node.membership.on_disconnect(peer_id, time.monotonic()))


async def run_gossip(node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Exchange digests with every known peer each `gossip_interval_s` (sooner after a change).

    Rounds do not wait for their exchanges: one with a slow or dying peer (up to EXCHANGE_TIMEOUT_S)
    would hold back the membership's clock (`tick`: suspicion, departures, the election) and the digests
    to every other peer. A peer whose exchange is still running is skipped until it ends."""
    for addr in node.config.bootstrap:
        node.membership.addrs.setdefault(addr.rsplit("/p2p/", 1)[1], (addr,))
    node.host.on_disconnect(lambda peer_id: on_disconnect(node, peer_id))
    in_flight: set[str] = set()

    async def exchange_once(peer_id: str, addrs) -> None:
        try:
            await exchange(node, peer_id, addrs)
        finally:
            in_flight.discard(peer_id)

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            now = time.monotonic()
            log_actions(node, node.membership.tick(now))
            for peer_id, addrs in node.membership.dial_targets(now):
                if peer_id not in in_flight:
                    in_flight.add(peer_id)
                    nursery.start_soon(exchange_once, peer_id, addrs)
            node.gossip_soon = trio.Event()
            with trio.move_on_after(node.config.gossip_interval_s):
                await node.gossip_soon.wait()


async def run_link_probes(node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Measure bandwidth to up to MAX_PROBED_PEERS serving peers (short timed transfers, best of
    PROBES_PER_LINK, after the model is loaded so loading does not slow the measurement)."""
    task_status.started()
    await node.preloaded.wait()
    counts: dict[str, int] = {}
    while True:
        await trio.sleep(PROBE_PAUSE_S)
        alive = set(node.membership.serving_ids(with_self=False))
        todo = [p for p in sorted(alive) if counts.get(p, 0) < PROBES_PER_LINK][:MAX_PROBED_PEERS]
        for peer_id in todo:
            try:
                gbps, path = await measure_gbps(node, peer_id, node.config.bandwidth_probe_bytes)
            except Exception as e:  # a failed or timed-out probe is retried next round
                logger.debug("bandwidth probe to %s failed: %s", peer_id, e or type(e).__name__)
                continue
            counts[peer_id] = counts.get(peer_id, 0) + 1
            node.links_gbps[peer_id] = round(max(gbps, node.links_gbps.get(peer_id, 0.0)), 3)
            logger.debug("bandwidth probe to %s over %s: %.2f Gbit/s", peer_id, path, gbps)
            if counts[peer_id] == PROBES_PER_LINK:
                logger.info("link to %s: %.2f Gbit/s (best of %d probes, measured over %s)", peer_id,
                            node.links_gbps[peer_id], PROBES_PER_LINK, path)
