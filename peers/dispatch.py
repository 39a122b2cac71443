"""Entry-peer dispatch: route a client's request through a prefill and a decode replica, relay its tokens.

How it works (ThunderServe, MLSys 2025, section 4: the plan's routing LP gives each prefill group a share
of the requests and each (prefill, decode) pair a share of the KV flow; here those shares are divided by
1 + the replica's live queue, so a busy replica gets fewer new requests until its load report drops):
1. wait (bounded) until the plan has a ready route (groups every peer of which is ready for them); pick
   the prefill group, then its decode partner;
2. open `/swarm/decode/1.0.0` to the decode replica (it will wait for the KV), then
   `/swarm/prefill/1.0.0` to the prefill replica (each record names its group: a peer may serve several),
   which answers the first token and pushes the KV (slices of layers to each decode stage when either
   replica is a pipeline across peers: `kvroute`);
3. relay every token to the client in order. The `Ledger` records each (request id, index) forwarded,
   so a token is never sent twice and a request knows exactly where it stands (the recovery work
   resumes from there). A failure before the first token is retried on a fresh route.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from peers.daemon_errors import BadRequestError, NoReplicaError, ReplicaFailedError
from peers.membership import ready_group_ids
from swarm.errors import SwarmError, WireError
from swarm.net.errors import StreamError
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import Ack, DecodeWatch, GenerateRequest, PrefillJob, RequestFailure, TokenChunk

logger = logging.getLogger(__name__)

GENERATE_PROTOCOL = "/swarm/generate/1.0.0"
PREFILL_PROTOCOL = "/swarm/prefill/1.0.0"
DECODE_PROTOCOL = "/swarm/decode/1.0.0"
READ_REQUEST_TIMEOUT_S = 5.0
ACK_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
RETRY_PAUSE_S = 0.3


@dataclass(frozen=True)
class Route:
    epoch: int
    prefill_group: int
    decode_group: int
    prefill_peer: str
    decode_peer: str

    @property
    def is_colocated(self) -> bool:
        return self.prefill_group == self.decode_group


def choose_route(holder, ready_by_peer: dict[str, set[int]], load_of: Callable[[str], int],
                 rng: random.Random) -> Route | None:
    """A (prefill, decode) pair of ready groups by the plan's shares / (1 + live load); None if none. A group
    is ready when every peer of it says it is ready for that group (`ready_by_peer`: peer id -> group ids;
    a peer with several GPUs may be ready for one of its groups and still loading another)."""
    plan = holder.plan
    if plan is None:
        return None
    ready = ready_group_ids(holder, ready_by_peer)
    pairs = [(p, d, share) for p, d, share in plan.routing.kv if p in ready and d in ready and share > 0]
    if not pairs:
        return None
    prefill_weights: dict[int, float] = {}
    for p, _, _ in pairs:
        share = plan.routing.prefill.get(p, 0.0) or 1e-9
        prefill_weights[p] = share / (1 + load_of(holder.peer_of_group(p)))
    prefill = _pick(prefill_weights, rng)
    decode_weights = {d: share / (1 + load_of(holder.peer_of_group(d))) for p, d, share in pairs if p == prefill}
    decode = _pick(decode_weights, rng)
    return Route(plan.epoch, prefill, decode, holder.peer_of_group(prefill), holder.peer_of_group(decode))


def _pick(weights: dict[int, float], rng: random.Random) -> int:
    keys = sorted(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


class Ledger:
    """Every token the entry peer has forwarded, as (request id, index): the next index per request."""

    def __init__(self) -> None:
        self.next_index: dict[str, int] = {}

    def record(self, chunk: TokenChunk) -> TokenChunk | None:
        """The part of `chunk` not yet forwarded (None if all of it was); raises on a gap."""
        have = self.next_index.get(chunk.request_id, 0)
        if chunk.index > have:
            raise ReplicaFailedError(f"request {chunk.request_id}: token {chunk.index} arrived but only "
                                     f"{have} were forwarded (tokens lost in between)")
        skip = have - chunk.index
        if skip >= len(chunk.token_ids) and not (chunk.finish_reason and not chunk.token_ids):
            return None
        self.next_index[chunk.request_id] = have + len(chunk.token_ids) - skip
        return TokenChunk(chunk.request_id, have, chunk.token_ids[skip:], chunk.text if skip == 0 else "",
                          chunk.finish_reason)

    def delivered(self, request_id: str) -> int:
        return self.next_index.get(request_id, 0)

    def forget(self, request_id: str) -> None:
        self.next_index.pop(request_id, None)


async def serve_generate(node, stream) -> None:
    """`/swarm/generate/1.0.0`: one client request in, its token chunks (or a failure) out."""
    with trio.fail_after(READ_REQUEST_TIMEOUT_S):
        request = await read_message(stream, expect=GenerateRequest)
    if request.request_id in node.ledger.next_index:
        await write_message(stream, RequestFailure(request.request_id, "duplicate", "this request id is running"))
        return

    async def deliver(chunk: TokenChunk) -> None:
        await write_message(stream, chunk)

    try:
        await run_request(node, request, deliver)
    except (SwarmError, trio.TooSlowError) as e:
        message = str(e) or f"no answer within {node.config.request_timeout_s:g} s"
        logger.warning("request %s failed: %s", request.request_id, message)
        code = {NoReplicaError: "unavailable", BadRequestError: "bad_request"}.get(type(e), "failed")
        await write_message(stream, RequestFailure(request.request_id, code, message[:4000]))
    finally:
        node.ledger.forget(request.request_id)
    await stream.close()


async def run_request(node, request: GenerateRequest, deliver: Callable[[TokenChunk], Awaitable[None]]) -> None:
    """Drive one request to its end through the swarm; `deliver` gets each new chunk, in order."""
    node.ledger.next_index[request.request_id] = 0

    async def forward(chunk: TokenChunk) -> bool:
        if chunk.finish_reason == "prefilled":
            chunk = TokenChunk(chunk.request_id, chunk.index, chunk.token_ids, chunk.text, "")
        new = node.ledger.record(chunk)
        if new is not None:
            await deliver(new)
        return bool(chunk.finish_reason)

    for attempt in range(1, MAX_ATTEMPTS + 1):
        route = await wait_for_route(node)
        try:
            with trio.fail_after(node.config.request_timeout_s):
                await _run_on_route(node, request, route, forward)
            return
        except SwarmError as e:  # a replica or link failed; before the first token, try another route
            if isinstance(e, BadRequestError) or node.ledger.delivered(request.request_id) > 0 \
                    or attempt == MAX_ATTEMPTS:
                raise
            logger.info("request %s: route %s failed before its first token (%s); trying again",
                        request.request_id, route, e)
            await trio.sleep(RETRY_PAUSE_S)


async def wait_for_route(node) -> Route:
    """A route over ready replicas, waiting up to `ready_wait_s` for one."""
    with trio.move_on_after(node.config.ready_wait_s):
        while True:
            route = choose_route(node.holder, node.ready_by_peer(), node.load_of, node.rng)
            if route is not None:
                return route
            await node.wait_for_change()
    raise NoReplicaError(f"no ready prefill/decode replica within {node.config.ready_wait_s:g} s "
                         f"(plan epoch {node.holder.epoch}; `swarm status` shows which peers are loading)")


async def _run_on_route(node, request: GenerateRequest, route: Route, forward) -> None:
    job = PrefillJob(request, route.epoch, route.decode_peer, node.config.kv_bits, group_id=route.prefill_group,
                     decode_group_id=route.decode_group)
    if route.is_colocated:
        prefill = await node.open_stream(route.prefill_peer, PREFILL_PROTOCOL)
        try:
            await write_message(prefill, job)
            while not await forward(await _read_chunk(prefill, route.prefill_peer)):
                pass
        finally:
            await node.close_stream(prefill)
        return
    decode = await node.open_stream(route.decode_peer, DECODE_PROTOCOL)
    try:
        await write_message(decode, DecodeWatch(request, route.epoch, group_id=route.decode_group))
        with trio.fail_after(ACK_TIMEOUT_S):
            await _expect_ack(decode, route.decode_peer)
        prefill = await node.open_stream(route.prefill_peer, PREFILL_PROTOCOL)
        try:
            await write_message(prefill, job)
            first = await _read_chunk(prefill, route.prefill_peer)
            if await forward(first) and first.finish_reason != "prefilled":
                return  # the first token ended the request: no KV moves
            await _expect_ack(prefill, route.prefill_peer)
        finally:
            await node.close_stream(prefill)
        while not await forward(await _read_chunk(decode, route.decode_peer)):
            pass
    finally:
        await node.close_stream(decode)


async def _read_chunk(stream, peer_id: str) -> TokenChunk:
    return await _read_reply(stream, peer_id, TokenChunk, "tokens")


async def _expect_ack(stream, peer_id: str) -> None:
    await _read_reply(stream, peer_id, Ack, "an Ack")


async def _read_reply(stream, peer_id: str, expected: type, what: str):
    """A replica's next message, which must be `expected`; a failure it reports is raised as ours."""
    try:
        answer = await read_message(stream)
    except StreamError as e:
        raise ReplicaFailedError(f"replica {peer_id} went away mid-request: {e or type(e).__name__}") from None
    if isinstance(answer, RequestFailure):
        raise _failure(answer, peer_id)
    if not isinstance(answer, expected):
        raise WireError(f"replica {peer_id} sent a {type(answer).__name__} where {what} was expected")
    return answer


def _failure(answer: RequestFailure, peer_id: str) -> SwarmError:
    if answer.code == "bad_request":
        return BadRequestError(answer.message)
    return ReplicaFailedError(f"replica {peer_id}: {answer.code}: {answer.message}")
