"""Sequences and the continuous-batching scheduler.

How it works (after nano-vllm's scheduler.py, GeeeekExplorer/nano-vllm): each step is either a prefill
step or a decode step. Waiting sequences are admitted first, oldest first, while the step's token
budget, the sequence limit and the free KV blocks allow; if any were admitted, the step prefills them.
Otherwise every running sequence decodes one token. When a running sequence needs a block and none is
free, the newest running sequence is pre-empted: its blocks are freed and it goes back to the front of
the waiting queue, to be prefilled again later (prompt plus the tokens it already produced), so running
out of blocks slows requests down but never fails them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from peers.engine.kv_cache import BlockManager
from peers.engine.sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PARKED = "parked"  # prefill role: prefilled, holding its KV until exported or aborted


@dataclass(eq=False)
class Sequence:
    """One request's tokens and cache state. Invariant: the KV of all tokens but the last is cached
    (num_cached_tokens == len(token_ids) - 1) whenever the sequence is running between steps."""

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    stop_token_ids: frozenset[int]
    status: Status = Status.WAITING
    block_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    text: str = ""  # decoded output so far (first stage only)
    num_preemptions: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


class Scheduler:
    """Waiting and running queues over one block manager; decides what each step computes."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.preempted_ids: list[str] = []  # since the last call to take_preempted()
        self.num_preemptions = 0  # in total, for metrics and tests

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit_running(self, seq: Sequence) -> None:
        """Put a sequence whose KV is already cached (imported) straight into the running batch."""
        seq.status = Status.RUNNING
        self.running.append(seq)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences of the next step and whether it is a prefill step."""
        scheduled, num_tokens = [], 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            fits_budget = not scheduled or num_tokens + seq.num_tokens <= self.max_num_batched_tokens
            if not fits_budget or not self.blocks.can_grow(seq.block_ids, seq.num_tokens):
                break
            self.blocks.grow(seq.block_ids, seq.num_tokens)
            seq.status = Status.RUNNING
            num_tokens += seq.num_tokens
            scheduled.append(self.waiting.popleft())
        if scheduled:
            self.running.extend(scheduled)
            return scheduled, True
        while self.running and len(scheduled) < self.max_num_seqs:
            seq = self.running.popleft()
            while not self.blocks.can_grow(seq.block_ids, seq.num_tokens):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.blocks.grow(seq.block_ids, seq.num_tokens)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled, False

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and queue it first for recomputation."""
        self.blocks.free(seq.block_ids)
        seq.status = Status.WAITING
        seq.num_cached_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.preempted_ids.append(seq.request_id)
        self.waiting.appendleft(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence from whichever queue holds it and free its blocks."""
        for queue in (self.waiting, self.running):
            if seq in queue:
                queue.remove(seq)
        self.blocks.free(seq.block_ids)

    def take_preempted(self) -> list[str]:
        ids, self.preempted_ids = self.preempted_ids, []
        return ids
