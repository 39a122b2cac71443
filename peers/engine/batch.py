"""Packing one step's sequences into the tensors a forward pass reads (token ids, positions, slots,
block tables and the decode mask), from either the engine's own sequences or a hidden-state header.
"""

from __future__ import annotations

import torch

from peers.engine.kv_cache import slots_of
from peers.engine.model import StepInput


def prefill_input(block_tables: list[list[int]], lengths: list[int], block_size_tokens: int) -> StepInput:
    """Every sequence from position 0 to its length; `block_tables[i]` already holds `lengths[i]` tokens."""
    positions = torch.cat([torch.arange(n) for n in lengths])
    slots = torch.cat([slots_of(b, 0, n, block_size_tokens) for b, n in zip(block_tables, lengths, strict=True)])
    return StepInput(is_prefill=True, positions=positions, slots=slots, query_lens=list(lengths))


def decode_input(block_tables: list[list[int]], context_lens: list[int], block_size_tokens: int) -> StepInput:
    """One token per sequence at position context_len - 1, attending to its first context_len tokens."""
    batch = len(block_tables)
    max_blocks = max(len(b) for b in block_tables)
    table = torch.zeros((batch, max_blocks), dtype=torch.long)  # padding points at block 0, masked below
    for i, blocks in enumerate(block_tables):
        table[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.long)
    lens = torch.tensor(context_lens, dtype=torch.long)
    positions = lens - 1
    slots = table[torch.arange(batch), positions // block_size_tokens] * block_size_tokens + positions % block_size_tokens
    offsets = torch.arange(max_blocks * block_size_tokens)
    mask = torch.zeros((1, batch, 1, offsets.numel()))  # (1, batch, 1, context)
    mask.masked_fill_((offsets[None, :] >= lens[:, None])[None, :, None, :], float("-inf"))
    return StepInput(is_prefill=False, positions=positions, slots=slots, query_lens=[1] * batch,
                     block_tables=table, mask=mask)
