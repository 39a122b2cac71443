"""A real swarm of processes on 127.0.0.1 (tiny random-weight model, fp16 KV on the wire).

The tests run in file order on one swarm: agreement first, then bad input, then failures (a killed decode
peer, then a killed coordinator), each of which changes the swarm for the tests after it.
"""

from __future__ import annotations

import signal
import struct
import time

import pytest
import trio
from e2e_helpers import local_tokens

from swarm.client import AsyncSwarmClient
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.net.rpc import read_message, write_message
from swarm.wire.codec import WIRE_VERSION
from swarm.wire.plan import Plan
from swarm.wire.requests import GenerateRequest, MemberDigest, PrefillJob, RequestFailure, TokenChunk

pytestmark = pytest.mark.slow

PEERS = [PeerSpec("p-a40", "A40"), PeerSpec("p-3090-0", "RTX3090Ti"), PeerSpec("p-3090-1", "RTX3090Ti")]
PROMPTS = ("Hello swarm", "The quick brown fox", "abc")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def swarm(tiny_model_dir):
    with LocalSwarm(PEERS, model=str(tiny_model_dir), kv_bits=16) as local:
        local.wait_for_plan(120)
        yield local


def statuses(swarm: LocalSwarm) -> dict:
    return {name: swarm.client(name, connect_timeout_s=3.0).status() for name in swarm.addrs
            if swarm.processes[name].poll() is None}


def test_membership_converges_on_one_coordinator_and_the_plan_is_applied(swarm):
    views = statuses(swarm)
    serving_ids = sorted(m.peer_id for m in views["bootstrap"].members if m.is_serving)
    assert len(serving_ids) == 3
    coordinators = {v.coordinator_id for v in views.values()}
    assert len(coordinators) == 1 and coordinators <= set(serving_ids)
    assert len({(v.epoch, v.plan_json) for v in views.values()}) == 1
    plan = Plan.from_json(views["bootstrap"].plan_json)
    assert {g.role for g in plan.groups} == {"prefill", "decode"}  # so the tests below cross the KV path
    assert all(m.is_ready for m in views["bootstrap"].members if m.group_id >= 0)


def test_settled_daemons_share_fingerprints_so_the_plan_goes_only_to_a_peer_that_lacks_it(swarm):
    async def digests():
        async with AsyncSwarmClient(swarm.addrs["bootstrap"][:1]) as client:
            async def ask(name: str, fingerprints: dict) -> MemberDigest:
                peer_id = await client.host.dial(swarm.addrs[name][0])
                stream = await client.host.open_stream(peer_id, "/swarm/member/1.0.0")
                with trio.fail_after(8.0):
                    await write_message(stream, MemberDigest(client.host.peer_id, 1, ("/ip4/127.0.0.1/tcp/9",),
                                                             **fingerprints))
                    return await read_message(stream, expect=MemberDigest)

            first = {}

            async def ask_into(name: str) -> None:
                first[name] = await ask(name, {})

            async with trio.open_nursery() as nursery:  # all at once: before any of them lists this client
                for name in swarm.addrs:
                    nursery.start_soon(ask_into, name)
            return first, await ask("p-a40", {"plan_hash": first["p-a40"].plan_hash})

    first, again = trio.run(digests)
    assert all(d.plan is not None and d.known for d in first.values())  # no fingerprints sent: full bodies
    assert len({d.plan_hash for d in first.values()}) == 1 and first["bootstrap"].plan_hash
    assert len({d.members_hash for d in first.values()}) == 1  # so digests between them carry no addresses
    assert again.plan is None and again.plan_hash == first["p-a40"].plan_hash  # it holds the plan: left out


@pytest.mark.parametrize("entry", ["bootstrap", "p-a40"])
def test_greedy_answers_equal_a_local_engine_with_fp16_kv(swarm, tiny_model_dir, entry):
    client = swarm.client(entry)
    for prompt in PROMPTS:
        completion = client.generate(prompt, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert list(completion.token_ids) == local_tokens(tiny_model_dir, prompt, MAX_TOKENS)
        assert completion.finish_reason == "length" and completion.ttft_s > 0


def test_client_fails_over_to_the_next_listed_peer(swarm):
    from swarm.client import SwarmClient, UnreachableError

    dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWMVBQ5jUKVE7oJza4DiNRKrhwA4zygowkvmro7vin3soh"
    start = time.monotonic()
    completion = SwarmClient([dead, swarm.addrs["p-3090-0"][0]], connect_timeout_s=3.0).generate("x", max_tokens=2)
    assert completion.num_tokens >= 1 and time.monotonic() - start < 30
    with pytest.raises(UnreachableError, match="no peer reachable"):
        SwarmClient([dead], connect_timeout_s=2.0).generate("x", max_tokens=2)


def test_stream_delivers_every_index_once_in_order(swarm):
    chunks = list(swarm.client("p-3090-1").stream("count", max_tokens=MAX_TOKENS, ignore_eos=True))
    indices = [c.index + i for c in chunks for i in range(len(c.token_ids))]
    assert indices == list(range(MAX_TOKENS)) and chunks[-1].finish_reason == "length"


def test_swarm_generate_cli_streams_through_the_swarm(swarm, capsys):
    """`swarm generate --peer ADDR PROMPT` (the generate command's own parser plus the SDK's swarm flags)."""
    import argparse

    from swarm.cli import generate_cmd
    from swarm.client.cli import cli_generate

    parser = argparse.ArgumentParser()
    generate_cmd.add_arguments(parser)  # it adds the SDK's --peer/--swarm-key itself
    args = parser.parse_args(["--peer", swarm.addrs["p-3090-0"][0], "--max-tokens", "5", "--stop", "zzz", "Hi"])
    assert cli_generate(args) == 0
    captured = capsys.readouterr()
    assert "[5 tokens" in captured.err and "TTFT" in captured.err


def test_a_request_the_model_cannot_take_gets_a_clear_error_and_no_retry(swarm):
    from swarm.client import GenerationError

    client = swarm.client("bootstrap")
    with pytest.raises(GenerationError) as caught:
        client.generate("x" * 400, max_tokens=4)  # the tiny model's context is 256 tokens
    assert caught.value.code == "bad_request" and "context" in caught.value.message
    assert swarm.log("bootstrap").count("trying again") == 0


async def send_raw(addr: str, protocol: str, data: bytes) -> bytes | None:
    """Write raw bytes on a fresh stream; what comes back before the stream ends (None: it never ended)."""
    async with AsyncSwarmClient([addr]) as client:
        stream, _ = await client.open(protocol)
        await stream.write(data)
        received = b""
        with trio.move_on_after(8.0):
            while True:
                try:
                    chunk = await stream.read(65536)
                except Exception:  # a reset stream ends the read
                    return received
                if not chunk:
                    return received
                received += chunk
        return None


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


BAD_INPUTS = {
    "garbage": framed(b"\xc1\xff\x00not msgpack"),
    "oversized": struct.pack(">I", 1 << 30) + b"x" * 64,
    "unknown type": framed(bytes([0x93, WIRE_VERSION, 0x63, 0x90])),  # [1, 99, []]
    "wrong type": framed(__import__("swarm.wire.codec", fromlist=["encode"]).encode(TokenChunk("r", 0, ()))),
    "cut short": struct.pack(">I", 100) + b"\x93\x01",
}
PROTOCOLS = ["/swarm/generate/1.0.0", "/swarm/prefill/1.0.0", "/swarm/decode/1.0.0", "/swarm/kv/1.0.0",
             "/swarm/status/1.0.0", "/swarm/member/1.0.0"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_messages_reset_the_stream_and_the_peer_keeps_serving(swarm, protocol):
    addr = swarm.addrs["p-a40"][0]
    for name, data in BAD_INPUTS.items():
        start = time.monotonic()
        answer = trio.run(send_raw, addr, protocol, data)
        assert time.monotonic() - start < 8.0, name
        assert answer == b"", f"{name}: the peer answered {answer[:40]!r} instead of resetting"
    assert swarm.processes["p-a40"].poll() is None
    assert "stream reset" in swarm.log("p-a40")
    assert swarm.client("p-a40").generate("still here", max_tokens=3).num_tokens >= 1


async def exchange(addr: str, protocol: str, message):
    async with AsyncSwarmClient([addr]) as client:
        stream, _ = await client.open(protocol)
        with trio.fail_after(8.0):
            await write_message(stream, message)
            return await read_message(stream), client.host.peer_id


def test_stale_epoch_plan_and_job_are_ignored(swarm):
    before = swarm.client("p-3090-0").status()
    current = Plan.from_json(before.plan_json)
    stale = current.with_epoch(current.epoch - 1) if current.epoch > 0 else current
    stale = Plan(stale.format, stale.epoch, "another-model", stale.groups, stale.routing)
    addr = swarm.addrs["p-3090-0"][0]
    coordinator_term = swarm_term(addr)

    async def push_stale_digest():
        async with AsyncSwarmClient([addr]) as client:
            stream, _ = await client.open("/swarm/member/1.0.0")
            digest = MemberDigest(client.host.peer_id, 1, ("/ip4/127.0.0.1/tcp/9",), max_epoch=stale.epoch,
                                  plan=stale, plan_term=coordinator_term, plan_coordinator_id=before.coordinator_id,
                                  plan_hosts=dict(_hosts_of(before)))
            with trio.fail_after(8.0):
                await write_message(stream, digest)
                return await read_message(stream)

    reply = trio.run(push_stale_digest)
    assert isinstance(reply, MemberDigest) and reply.plan == current
    after = swarm.client("p-3090-0").status()
    assert (after.epoch, after.plan_json) == (before.epoch, before.plan_json)
    job = PrefillJob(GenerateRequest("stale-job", prompt="x"), epoch=max(0, current.epoch - 1),
                     decode_peer_id=before.peer_id)
    if current.epoch > 0:
        answer, _ = trio.run(exchange, addr, "/swarm/prefill/1.0.0", job)
        assert isinstance(answer, RequestFailure) and answer.code == "stale_epoch"


def swarm_term(addr: str) -> int:
    """The election term a peer follows (from its digest)."""
    async def ask():
        async with AsyncSwarmClient([addr]) as client:
            stream, _ = await client.open("/swarm/member/1.0.0")
            with trio.fail_after(8.0):
                await write_message(stream, MemberDigest(client.host.peer_id, 1, ("/ip4/127.0.0.1/tcp/9",)))
                return (await read_message(stream)).coordinator_term

    return trio.run(ask)


def _hosts_of(status) -> dict[str, str]:
    return {m.host: m.peer_id for m in status.members if m.is_serving}


def wait_for(predicate, timeout_s: float, swarm: LocalSwarm):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate(swarm.client("bootstrap", connect_timeout_s=2.0).status())
        except Exception:  # the status request itself may fail while the swarm re-plans
            value = None
        if value:
            return value
        time.sleep(0.1)
    return None


def test_a_killed_peer_is_removed_from_the_plan_within_3_s(swarm):
    status = swarm.client("bootstrap").status()
    victim = next(m for m in status.members if m.is_serving and m.peer_id != status.coordinator_id
                  and m.host != "p-a40")
    start = time.monotonic()
    swarm.kill(victim.host, signal.SIGKILL)
    gone = wait_for(lambda s: s.plan_json and victim.host not in s.plan_json and s.epoch > status.epoch, 3.0, swarm)
    elapsed_s = time.monotonic() - start
    assert gone, f"{victim.host} still in the plan {elapsed_s:.1f} s after SIGKILL"
    assert wait_for(lambda s: all(m.is_ready for m in s.members if m.group_id >= 0), 30.0, swarm)
    assert swarm.client("bootstrap").generate("after a failure", max_tokens=4).num_tokens >= 1


def test_a_killed_coordinator_is_replaced_with_a_higher_epoch(swarm, tiny_model_dir):
    status = swarm.client("bootstrap").status()
    old = next(m for m in status.members if m.peer_id == status.coordinator_id)
    swarm.kill(old.host, signal.SIGKILL)
    new = wait_for(lambda s: s if s.coordinator_id not in ("", old.peer_id) and s.epoch > status.epoch
                   and old.host not in s.plan_json else None, 10.0, swarm)
    assert new is not None, "no new coordinator with a higher epoch within 10 s"
    survivors = [m for m in new.members if m.is_serving]
    assert len(survivors) == 1 and new.coordinator_id == survivors[0].peer_id
    assert wait_for(lambda s: all(m.is_ready for m in s.members if m.group_id >= 0), 30.0, swarm)
    completion = swarm.client("bootstrap").generate("one peer left", max_tokens=MAX_TOKENS, ignore_eos=True)
    assert list(completion.token_ids) == local_tokens(tiny_model_dir, "one peer left", MAX_TOKENS)


def test_a_new_peer_joins_and_the_next_plan_uses_it(swarm, tiny_model_dir):
    before = swarm.client("bootstrap").status()
    swarm.spawn(PeerSpec("p-late", "A40"), bootstrap=swarm.bootstrap_addr)
    swarm.wait_for_addrs("p-late", 60)
    grown = wait_for(lambda s: s if "p-late" in s.plan_json and s.epoch > before.epoch
                     and all(m.is_ready for m in s.members if m.group_id >= 0) else None, 60.0, swarm)
    assert grown is not None, "the new peer is in no ready plan after 60 s"
    assert {m.host for m in grown.members if m.is_serving} == {"p-late", *(m.host for m in before.members
                                                                        if m.is_serving)}
    completion = swarm.client("bootstrap").generate("two peers again", max_tokens=MAX_TOKENS, ignore_eos=True)
    assert list(completion.token_ids) == local_tokens(tiny_model_dir, "two peers again", MAX_TOKENS)
