"""Replica engines: a pipelined prefill replica, and a decode (or colocated) replica with continuous batching.

How it works (one event per batch step, never per token):
  * Prefill (DistServe, OSDI'24 section 4): FIFO prompt batching up to `max_batch_tokens`. A pipeline is
    a flow shop: each stage is a server, and a batch moves stage to stage in order, starting a stage once
    it has left the previous one and the stage is free; a stage's time (`GroupCost`) includes sending the
    hidden states to the next stage's host. The entry stage takes the next batch as soon as it is free
    (at most `pp` batches in flight), so stages work on different batches at once: a saturated pipeline
    finishes one batch per busiest-stage time (`prefill_interval_s`), a lone batch takes
    `prefill_s` (the sum), and a short prompt behind a long one waits for it at each stage. A recovered
    request re-prefills its prompt plus the tokens already delivered.
  * Decode (Orca/vLLM continuous batching): sequences whose KV has arrived wait FIFO and are admitted
    between steps while their KV fits under WATERMARK of the replica's capacity (and fewer than
    MAX_BATCH_SEQS run). A step advances every running sequence by one token and takes
    `decode_step_s(batch, context tokens)`. Each sequence's finishing step is known at admission, so a
    heap yields the finishers of a step in O(log n). If growing KV overflows the capacity, the newest
    sequence is pre-empted (vLLM's recompute policy): its KV is dropped and rebuilt (a prefill of its
    context) when it is re-admitted.
  * Colocated (`both`, vLLM-like, no chunked prefill): the same decode loop, but waiting prompts run first
    as a prefill batch that stalls the decode batch for its duration.
A sequence's KV context during a step is prompt + tokens delivered so far.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

import numpy as np

from sims.core import Simulator
from sims.ledger import Ledger
from swarm.plan.cost import GroupCost

WATERMARK = 0.95  # admit while KV stays under this share of capacity (room to grow)
MAX_BATCH_SEQS = 256  # vLLM's default max_num_seqs
MAX_BATCH_TOKENS = 4096  # prompt tokens in one prefill batch (at least one whole prompt)


def need_tokens(ledger: Ledger, rid: int) -> int:
    """Tokens a (re)prefill of `rid` computes: its prompt plus the tokens already delivered."""
    return int(ledger.prompt_tokens[rid] + ledger.tokens_done[rid])


def stage_times_s(cost: GroupCost, num_tokens: int, num_seqs: int) -> list[float]:
    """Per-stage times of one prefill batch: the terms whose sum is `cost.prefill_s` (same formula)."""
    return [float(t) for t in np.ravel(cost._prefill_stages(num_tokens, num_seqs))]


def take_batch(queue: deque, ledger: Ledger, max_tokens: int, room_tokens: float) -> tuple[list[int], int]:
    """FIFO prompts up to `max_tokens` (always at least one, if it fits in `room_tokens`)."""
    batch, tokens = [], 0
    while queue:
        rid = queue[0]
        need = need_tokens(ledger, rid)
        if (batch and tokens + need > max_tokens) or tokens + need > room_tokens:
            break
        batch.append(queue.popleft())
        tokens += need
    return batch, tokens


class PrefillReplica:
    """A prefill-only replica: prompt batches through a pipeline; hands finished prompts to `on_done`."""

    role = "prefill"

    def __init__(
        self,
        sim: Simulator,
        gid: int,
        cost: GroupCost,
        ledger: Ledger,
        on_done: Callable[[PrefillReplica, list[int]], None],
    ) -> None:
        self.sim, self.gid, self.cost, self.ledger, self.on_done = sim, gid, cost, ledger, on_done
        self.queue: deque[int] = deque()
        self.batches: dict[int, tuple[list, list[int], int]] = {}
        self.load_tokens = 0  # queued and in-flight prompt tokens (what the router balances)
        self.is_alive = True
        self.busy_s = 0.0  # of its busiest stage
        self.stage_free_s = [0.0] * cost.pp  # when each stage finishes the batches it has been given
        self._stage_busy_s = [0.0] * cost.pp
        self._entry = None
        self._next_batch = 0

    def submit(self, rid: int) -> None:
        self.queue.append(rid)
        self.load_tokens += need_tokens(self.ledger, rid)
        if self._entry is None:
            self._start()

    def _start(self) -> None:
        self._entry = None
        if not self.queue or not self.is_alive:
            return
        if len(self.batches) >= len(self.stage_free_s):  # every stage has a batch: wait for one to leave
            return
        if self.stage_free_s[0] > self.sim.now_s + 1e-12:
            self._entry = self.sim.at(self.stage_free_s[0], self._start)
            return
        batch, tokens = take_batch(self.queue, self.ledger, MAX_BATCH_TOKENS, max(self.cost.max_kv_tokens, 1))
        if not batch:  # a prompt longer than the replica's KV capacity can never run here
            rid = self.queue.popleft()
            self.load_tokens -= need_tokens(self.ledger, rid)
            self.ledger.fail(rid, self.sim.now_s)
            self._entry = self.sim.after(0.0, self._start)
            return
        done_s = self._through_stages(stage_times_s(self.cost, tokens, len(batch)))
        key = self._next_batch = self._next_batch + 1
        self.batches[key] = (self.sim.at(done_s, self._done, key), batch, tokens)
        self._entry = self.sim.at(self.stage_free_s[0], self._start)

    def _through_stages(self, times_s) -> float:
        """Book the batch on each stage in turn (FIFO per stage); returns when it leaves the last."""
        ready_s = self.sim.now_s
        for s, t in enumerate(times_s):
            ready_s = self.stage_free_s[s] = max(ready_s, self.stage_free_s[s]) + float(t)
            self._stage_busy_s[s] += float(t)
        self.busy_s = max(self._stage_busy_s)
        return ready_s

    def _done(self, key: int) -> None:
        _, batch, tokens = self.batches.pop(key)
        self.load_tokens -= tokens
        for rid in batch:
            self.ledger.first_token(rid, self.sim.now_s)
        self.on_done(self, batch)
        if self._entry is None:
            self._start()

    def stop(self) -> list[int]:
        """Fail or retire: every request it held (queued or mid-prefill), for re-routing."""
        self.is_alive = False
        Simulator.cancel(self._entry)
        held = list(self.queue)
        self.load_tokens = 0
        for handle, batch, _ in self.batches.values():
            Simulator.cancel(handle)
            held.extend(batch)
        self.queue.clear()
        self.batches.clear()
        return held


class DecodeReplica:
    """A decode replica with continuous batching; with `colocated=True` it also prefills (vLLM-like)."""

    def __init__(
        self,
        sim: Simulator,
        gid: int,
        cost: GroupCost,
        ledger: Ledger,
        on_finished: Callable[[int], None],
        *,
        colocated: bool = False,
    ) -> None:
        self.sim, self.gid, self.cost, self.ledger, self.on_finished = sim, gid, cost, ledger, on_finished
        self.role = "both" if colocated else "decode"
        self.capacity_tokens = float(cost.max_kv_tokens)
        self.prompts: deque[int] = deque()  # colocated only: requests waiting for their prefill
        self.waiting: deque[int] = deque()  # KV present (or to recompute), waiting for a batch slot
        self.running: dict[
            int, tuple[int, int, int]
        ] = {}  # rid -> (admit step, tokens done then, finish step)
        self.finish_heap: list[tuple[int, int]] = []
        self.recompute: set[int] = set()
        self.queued: dict[int, int] = {}  # rid -> tokens, for every sequence not yet in the batch
        self.queued_tokens = 0
        self.num_steps = 0
        self.context_tokens = 0
        self.num_preemptions = 0
        self.busy_s = 0.0
        self.is_alive = True
        self._pending = None
        self._prefilling: list[int] = []

    # -- inputs -------------------------------------------------------------------------------------
    def submit(self, rid: int) -> None:
        """A new prompt (colocated replicas only)."""
        self.prompts.append(rid)
        self._enqueue(rid)
        self._kick()

    def admit_kv(self, rid: int) -> None:
        """A sequence whose KV has arrived (or must be recomputed, if `rid` is in `recompute`)."""
        self.waiting.append(rid)
        self._enqueue(rid)
        self._kick()

    @property
    def load_tokens(self) -> float:
        """KV tokens in the batch plus those of every sequence waiting for it (what the router balances)."""
        return self.context_tokens + self.queued_tokens

    def _enqueue(self, rid: int) -> None:
        tokens = self.queued[rid] = need_tokens(self.ledger, rid)
        self.queued_tokens += tokens

    def _dequeue(self, rid: int) -> None:
        self.queued_tokens -= self.queued.pop(rid, 0)

    # -- the loop -----------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._pending is None and self.is_alive:
            self._iterate()

    def _iterate(self) -> None:
        self._pending = None
        if self.prompts and self._prefill_batch():
            return
        recompute_tokens = self._admit()
        if not self.running:
            return
        batch = len(self.running)
        step_s = float(self.cost.decode_step_s(batch, self.context_tokens))
        if recompute_tokens:
            step_s += float(self.cost.prefill_s(recompute_tokens, 1))
        self.busy_s += step_s
        self._pending = self.sim.after(step_s, self._step_done, batch)

    def _prefill_batch(self) -> bool:
        room = self.capacity_tokens * WATERMARK - self.context_tokens
        head = self.prompts[0]
        if self.ledger.prompt_tokens[head] + self.ledger.tokens_done[head] > self.capacity_tokens * WATERMARK:
            self._dequeue(head)
            self.ledger.fail(self.prompts.popleft(), self.sim.now_s)  # can never fit here
            return self._prefill_batch() if self.prompts else False
        batch, tokens = take_batch(self.prompts, self.ledger, MAX_BATCH_TOKENS, room)
        if not batch:
            return False
        self._prefilling = batch
        duration_s = float(self.cost.prefill_s(tokens, len(batch)))
        self.busy_s += duration_s
        self._pending = self.sim.after(duration_s, self._prefill_done)
        return True

    def _prefill_done(self) -> None:
        for rid in self._prefilling:
            self.ledger.first_token(rid, self.sim.now_s)
            self.waiting.append(rid)
        self._prefilling = []
        self._iterate()

    def _admit(self) -> int:
        """Move waiting sequences into the batch while they fit; returns tokens whose KV must be rebuilt."""
        ledger, rebuilt = self.ledger, 0
        limit = self.capacity_tokens * WATERMARK
        while self.waiting and len(self.running) < MAX_BATCH_SEQS:
            rid = self.waiting[0]
            done = int(ledger.tokens_done[rid])
            context = int(ledger.prompt_tokens[rid]) + done
            if self.running and self.context_tokens + context > limit:
                break
            self.waiting.popleft()
            self._dequeue(rid)
            if rid in self.recompute:
                self.recompute.discard(rid)
                rebuilt += context
            remaining = int(ledger.output_tokens[rid]) - done
            if remaining <= 0:
                self._finish(rid)
                continue
            self.running[rid] = (self.num_steps, done, self.num_steps + remaining)
            self.context_tokens += context
            heapq.heappush(self.finish_heap, (self.num_steps + remaining, rid))
        return rebuilt

    def _step_done(self, batch: int) -> None:
        self.num_steps += 1
        self.context_tokens += batch
        heap = self.finish_heap
        while heap and heap[0][0] <= self.num_steps:
            step, rid = heapq.heappop(heap)
            if rid in self.running and self.running[rid][2] == step:  # else a stale entry (pre-empted)
                self.context_tokens -= self._context_of(rid)
                del self.running[rid]
                self._finish(rid)
        while self.context_tokens > self.capacity_tokens and len(self.running) > 1:
            self._preempt_newest()
        self._iterate()

    def _finish(self, rid: int) -> None:
        self.ledger.finish(rid, self.sim.now_s)
        self.on_finished(rid)

    def _context_of(self, rid: int) -> int:
        return int(self.ledger.prompt_tokens[rid]) + self._tokens_done(rid)

    def _tokens_done(self, rid: int) -> int:
        admit_step, done, _ = self.running[rid]
        return done + self.num_steps - admit_step

    def _preempt_newest(self) -> None:
        rid = max(self.running, key=lambda r: (self.running[r][0], r))
        self.ledger.tokens_done[rid] = self._tokens_done(rid)
        self.context_tokens -= self._context_of(rid)
        del self.running[rid]
        self.recompute.add(rid)
        self.waiting.appendleft(rid)
        self._enqueue(rid)
        self.num_preemptions += 1

    def stop(self) -> tuple[list[int], list[int]]:
        """Fail or retire: (requests with no KV here, running sequences with KV), tokens_done updated."""
        self.is_alive = False
        Simulator.cancel(self._pending)
        for rid in self.running:
            self.ledger.tokens_done[rid] = self._tokens_done(rid)
        without_kv = list(self.prompts) + self._prefilling + list(self.waiting)
        with_kv = list(self.running)
        self.prompts.clear()
        self.waiting.clear()
        self.queued.clear()
        self.queued_tokens = 0
        self.running.clear()
        self.finish_heap.clear()
        self._prefilling = []
        return without_kv, with_kv
