"""`EngineWorker`: the trio side of one engine. Every engine call runs in a worker thread, never on trio's.

How it works: one task (`run_worker`) loops `engine.step()` in a thread (through a capacity limiter of
one, so engine calls never overlap) while any request waits or runs, and sleeps on an event otherwise.
Each request gets a bounded memory channel sized for all its events (max_tokens + 2), so handing out a
step's events never blocks the loop; a consumer that goes away aborts its request.

A peer runs one `EngineWorker` per group of the plan it is in (a host's GPUs may be split over several
groups); `GroupWorker` is that bookkeeping: the group, this peer's place in its pipeline, the device, the
worker and whether it is ready. `group_for` finds the group a request record names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from peers.engine import Engine, SamplingParams, TokenEvent
from peers.errors import CapacityError
from swarm.wire.requests import NO_GROUP

logger = logging.getLogger(__name__)

IMPORT_RETRIES = 40
IMPORT_RETRY_PAUSE_S = 0.25


@dataclass
class WorkerLoad:
    """What this engine is doing, for load reports and the status table."""

    num_queued: int = 0
    num_running: int = 0
    kv_tokens_free: int = 0
    tokens_per_s: float = 0.0


class EngineWorker:
    """Feeds requests into one engine and hands each request's `TokenEvent`s to its channel."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limiter = trio.CapacityLimiter(1)
        self.channels: dict[str, trio.MemorySendChannel] = {}
        self.importing: dict[str, trio.MemoryReceiveChannel] = {}  # first stage: KV hand-offs not complete
        self.has_work = trio.Event()
        self.tokens_window: list[tuple[float, int]] = []  # (time, tokens) of recent steps

    async def call(self, fn, *args, **kwargs):
        """Run `fn(*args, **kwargs)` (an engine method) in the worker thread."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self.limiter)

    async def add(self, request_id: str, prompt, *, messages=None, params: SamplingParams) -> trio.MemoryReceiveChannel:
        """Queue a request (text, token ids or chat messages); its events arrive on the returned channel."""
        receive = self._open_channel(request_id, params)
        try:
            await self.call(self.engine.add, request_id, prompt, messages=messages, params=params)
        except BaseException:
            self.channels.pop(request_id, None)
            raise
        self.has_work.set()
        return receive

    async def import_kv_part(self, request_id: str, blob: bytes, *, prompt_token_ids: list[int],
                             output_token_ids: list[int],
                             params: SamplingParams | None) -> trio.MemoryReceiveChannel | None:
        """Take (a slice of) a request's KV from a prefill replica (`Engine.import_kv_part`), retrying while
        the cache stays full for up to IMPORT_RETRIES * IMPORT_RETRY_PAUSE_S. Returns the channel its further
        events arrive on once this stage holds all its layers; None before that, and always on a later
        pipeline stage (whose tokens reach the entry peer through the first stage)."""
        is_first = self.engine.stage.is_first
        if is_first and request_id not in self.importing:  # parts may arrive concurrently: one channel
            self.importing[request_id] = self._open_channel(request_id, params)
        for attempt in range(IMPORT_RETRIES):
            try:
                is_complete = await self.call(self.engine.import_kv_part, request_id, blob,
                                              prompt_token_ids=prompt_token_ids, output_token_ids=output_token_ids,
                                              params=params)
                break
            except CapacityError:
                if attempt == IMPORT_RETRIES - 1:
                    raise
                await trio.sleep(IMPORT_RETRY_PAUSE_S)
        if not (is_complete and is_first):
            return None
        self.has_work.set()
        return self.importing.pop(request_id)

    async def drop_partial_kv(self, request_id: str) -> None:
        """Free an import that never completed (`Engine.drop_partial_kv`); logged if there was one."""
        if self.importing.pop(request_id, None) is not None:
            self.channels.pop(request_id, None)
        with trio.CancelScope(shield=True):
            if await self.call(self.engine.drop_partial_kv, request_id):
                logger.warning("request %s: its KV hand-off did not complete; the layers that came are freed",
                               request_id)

    async def abort(self, request_id: str) -> None:
        """Stop a request whose consumer went away; an already finished one is left alone."""
        if self.channels.pop(request_id, None) is None or request_id not in self.engine.seqs:
            return
        with trio.CancelScope(shield=True):
            await self.call(self.engine.abort, request_id)

    def load(self) -> WorkerLoad:
        scheduler = self.engine.scheduler
        now = time.monotonic()
        recent = [(t, n) for t, n in self.tokens_window if now - t < 5.0]
        self.tokens_window = recent
        return WorkerLoad(num_queued=len(scheduler.waiting), num_running=len(scheduler.running),
                          kv_tokens_free=scheduler.blocks.num_free_blocks * scheduler.blocks.block_size_tokens,
                          tokens_per_s=sum(n for _, n in recent) / 5.0)

    async def run_worker(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Step the engine while it has work; deliver each event to its request's channel."""
        task_status.started()
        while True:
            events = await self.call(self._step_if_busy)  # one thread hop per step
            if events is None:
                self.has_work = trio.Event()
                if not await self.call(self.engine.has_work):
                    await self.has_work.wait()
                continue
            self.tokens_window.append((time.monotonic(), sum(len(e.token_ids) for e in events)))
            for event in events:
                self._deliver(event)

    def close_requests(self) -> None:
        """End every request of this worker (it is stopping): their consumers see the channel close early."""
        for request_id, channel in list(self.channels.items()):
            channel.close()
            self.channels.pop(request_id, None)

    def _step_if_busy(self) -> list[TokenEvent] | None:
        """In the worker thread: one step if any request waits or runs, else None."""
        return self.engine.step() if self.engine.has_work() else None

    def _deliver(self, event: TokenEvent) -> None:
        channel = self.channels.get(event.request_id)
        if channel is None:
            return
        try:
            channel.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            logger.warning("request %s: its consumer is gone or stuck; dropping its tokens", event.request_id)
        if event.is_finished:
            if event.finish_reason != "prefilled":
                self.channels.pop(event.request_id, None)
            channel.close()

    def _open_channel(self, request_id: str, params: SamplingParams) -> trio.MemoryReceiveChannel:
        send, receive = trio.open_memory_channel(params.max_tokens + 2)
        self.channels[request_id] = send
        return receive


@dataclass
class GroupWorker:
    """One group of the plan this peer serves: its engine's worker and this peer's place in the group.

    `group_id` and the place follow the followed plan (a re-plan that keeps the layers and device keeps the
    worker and rewrites these); the role lives in the engine's config (`role`)."""

    group_id: int
    stage: int  # this peer's part along the group's pipeline; 0: the head, which the entry peers talk to
    num_stages: int
    next_peer: str | None  # the peer of the group's next stage, None on the last
    device: str  # the torch device of the engine, e.g. "cuda:1" or "cpu"
    worker: EngineWorker | None = None
    scope: trio.CancelScope | None = None
    is_ready: bool = False
    is_running: bool = False  # the worker's loop runs (a pipeline head's stops when a stage fails)

    @property
    def role(self) -> str:
        return self.worker.engine.config.role

    @property
    def layers(self) -> tuple[int, int]:
        stage = self.worker.engine.stage
        return stage.first_layer, stage.last_layer

    def describe(self) -> str:
        """E.g. "group 2 (decode, stage 1 of 2, layers 0-15) on cuda:1"."""
        where = f"stage {self.stage + 1} of {self.num_stages}, " if self.num_stages > 1 else ""
        first, last = self.layers
        return f"group {self.group_id} ({self.role}, {where}layers {first}-{last}) on {self.device}"


def group_for(groups: dict[int, GroupWorker], group_id: int,
              fits: Callable[[GroupWorker], bool] = lambda g: True) -> GroupWorker | None:
    """The group `group_id` of `groups` (this peer's, by id) if it `fits`; for NO_GROUP (a record from a peer
    that predates group ids) the one group that fits, None if none or several do."""
    if group_id != NO_GROUP:
        group = groups.get(group_id)
        return group if group is not None and group.worker is not None and fits(group) else None
    candidates = [g for g in groups.values() if g.worker is not None and fits(g)]
    return candidates[0] if len(candidates) == 1 else None
