"""Packing one step's sequences into the tensors a forward pass reads (token ids, positions, slots,
block tables and the decode mask), from either the engine's own sequences or a hidden-state header.

Index arithmetic runs on host ints; each tensor is then created on the engine's device in one copy.
"""

from __future__ import annotations

import torch

from peers.engine.kv_cache import slots_of
from peers.engine.model import StepInput

CPU = torch.device("cpu")


def prefill_input(block_tables: list[list[int]], lengths: list[int], block_size_tokens: int,
                  device: torch.device = CPU) -> StepInput:
    """Every sequence from position 0 to its length; `block_tables[i]` already holds `lengths[i]` tokens."""
    positions = [p for n in lengths for p in range(n)]
    slots = [s for b, n in zip(block_tables, lengths, strict=True) for s in slots_of(b, 0, n, block_size_tokens)]
    return StepInput(is_prefill=True, positions=torch.tensor(positions, device=device),
                     slots=torch.tensor(slots, device=device), query_lens=list(lengths))


def decode_input(block_tables: list[list[int]], context_lens: list[int], block_size_tokens: int,
                 device: torch.device = CPU) -> StepInput:
    """One token per sequence at position context_len - 1, attending to its first context_len tokens."""
    batch = len(block_tables)
    max_blocks = max(len(b) for b in block_tables)
    padded = [b + [0] * (max_blocks - len(b)) for b in block_tables]  # padding points at block 0, masked below
    table = torch.tensor(padded, dtype=torch.long, device=device)  # (batch, max_blocks)
    slots = [b[(n - 1) // block_size_tokens] * block_size_tokens + (n - 1) % block_size_tokens
             for b, n in zip(block_tables, context_lens, strict=True)]
    lens = torch.tensor(context_lens, dtype=torch.long, device=device)
    offsets = torch.arange(max_blocks * block_size_tokens, device=device)
    mask = torch.zeros((1, batch, 1, offsets.numel()), device=device)  # (1, batch, 1, context)
    mask.masked_fill_((offsets[None, :] >= lens[:, None])[None, :, None, :], float("-inf"))
    return StepInput(is_prefill=False, positions=lens - 1, slots=torch.tensor(slots, device=device),
                     query_lens=[1] * batch, block_tables=table, mask=mask)
