"""Sampling settings (validated) and the batched sampler: greedy, temperature, top-k, top-p, seeded.

A seeded request draws token n with a generator seeded from (seed, n), so the same request gives the
same tokens whether it ran in one engine, was handed from a prefill to a decode engine, or was
pre-empted and recomputed. The generator lives on the logits' device: seeded draws repeat exactly on one
kind of device, while a CPU and a GPU draw differently from the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peers.errors import SamplingError

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's eos tokens
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 100.0):
            raise SamplingError(f"temperature must be in [0, 100] (0 is greedy), got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.seed is not None and not (0 <= self.seed <= MAX_SEED):
            raise SamplingError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        if self.max_tokens < 1:
            raise SamplingError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: torch.Tensor, params: list[SamplingParams], num_generated: list[int]) -> list[int]:
    """One token per row of fp32 logits (batch, vocab); `num_generated[i]` seeds row i's draw.

    Tokens stay on the logits' device until one copy to the host at the end (one sync per step).
    """
    tokens = logits.argmax(dim=-1)  # (batch,)
    for i, p in enumerate(params):
        if not p.is_greedy:
            tokens[i] = _sample_row(logits[i], p, num_generated[i])
    return tokens.tolist()


def _sample_row(logits: torch.Tensor, p: SamplingParams, index: int) -> torch.Tensor:
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    generator = None
    if p.seed is not None:
        generator = torch.Generator(device=logits.device).manual_seed((p.seed * 1_000_003 + index) % (MAX_SEED + 1))
    return torch.multinomial(probs, 1, generator=generator)[0]  # 0-dim, on the logits' device
