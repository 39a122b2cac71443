"""What crosses between engines: a sequence's KV cache (via the kernels' KV blob) and a micro-batch's
hidden states (via swarm.wire.hidden), each turned into tensors here with errors that say what to fix.
Blobs are host bytes; tensors come from and go to the engine's device (the kernels quantise on it).
"""

from __future__ import annotations

import contextlib
import zlib

import torch

from kernels import KvExpectation, KvFormat, KvFormatError, decode_kv_blob, encode_kv_blob
from peers.engine.config import ModelConfig
from peers.engine.sampling import SamplingParams
from peers.errors import HandoffError
from swarm.errors import WireError
from swarm.wire.hidden import HiddenHeader, pack_hidden, unpack_hidden
from swarm.wire.kv import decode_kv_header

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def encode_kv(keys: list[torch.Tensor], values: list[torch.Tensor], fmt: KvFormat, config: ModelConfig,
              first_layer: int) -> bytes:
    """One sequence's KV, per layer (kv_heads, tokens, head_dim), as a KV blob in `fmt`."""
    with _current(keys[0].device):
        return encode_kv_blob(keys, values, fmt, model_fingerprint=config.fingerprint, first_layer=first_layer)


def decode_kv(blob: bytes, config: ModelConfig, first_layer: int, num_layers: int, num_tokens: int,
              dtype: torch.dtype, device: torch.device = torch.device("cpu")) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer K/V (kv_heads, num_tokens, head_dim) on `device` from a blob, checked against this engine's model."""
    expected = KvExpectation(config.fingerprint, first_layer, num_layers, config.num_kv_heads, config.head_dim)
    try:
        with _current(device):
            keys, values = decode_kv_blob(blob, expected, dtype=dtype, device=device)
    except KvFormatError as e:
        raise HandoffError(f"cannot import this KV cache: {e} (export it from an engine serving the same model "
                           f"folder and layers [{first_layer}, {first_layer + num_layers}))") from e
    if keys[0].shape[1] != num_tokens:
        raise HandoffError(f"the KV cache holds {keys[0].shape[1]} tokens but the request has {num_tokens} tokens "
                           "with cached KV (all but the last token): send the token ids the KV was exported with")
    return keys, values


def kv_layers(blob: bytes) -> tuple[int, int]:
    """The layer range [first, last) a KV blob holds, from its header (the payload is checked on decode)."""
    try:
        header, _ = decode_kv_header(blob)
    except WireError as e:
        raise HandoffError(f"bad KV blob: {e}") from e
    return header.first_layer, header.first_layer + header.num_layers


def _current(device: torch.device):
    """Make a CUDA device current while the kernels run on it: Triton launches on the current device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def hidden_to_blob(hidden: torch.Tensor, header_fields: dict) -> bytes:
    """A hidden-state blob of activations (tokens, hidden), on any device, and the other header fields."""
    payload = hidden.contiguous().view(torch.uint8).cpu().numpy().tobytes()  # one copy to the host
    header = HiddenHeader(dtype=DTYPE_NAMES[hidden.dtype], hidden_size=hidden.shape[1], payload_bytes=len(payload),
                          payload_crc32=zlib.crc32(payload), **header_fields)
    return pack_hidden(header, payload)


def blob_to_hidden(blob: bytes, config: ModelConfig, first_layer: int,
                   device: torch.device = torch.device("cpu")) -> tuple[HiddenHeader, torch.Tensor]:
    """The header and activations (tokens, hidden) on `device` of a blob for a stage starting at `first_layer`."""
    try:
        header, payload = unpack_hidden(blob)
    except WireError as e:
        raise HandoffError(f"bad hidden-state blob: {e}") from e
    if header.model_fingerprint != config.fingerprint:
        raise HandoffError("hidden states come from another model (fingerprint mismatch): every stage of a "
                           "pipeline must load the same model folder")
    if header.first_layer != first_layer or header.hidden_size != config.hidden_size:
        raise HandoffError(f"hidden states are for layer {header.first_layer} (hidden {header.hidden_size}) but this "
                           f"stage starts at layer {first_layer} (hidden {config.hidden_size})")
    dtype = {v: k for k, v in DTYPE_NAMES.items()}[header.dtype]
    hidden = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype).view(header.num_tokens, -1)
    return header, hidden.to(device)


def sampling_fields(params: list[SamplingParams], num_generated: list[int]) -> dict:
    """The per-sequence sampling fields of a HiddenHeader."""
    return {
        "temperatures": tuple(p.temperature for p in params),
        "top_ps": tuple(p.top_p for p in params),
        "top_ks": tuple(p.top_k for p in params),
        "seeds": tuple(-1 if p.seed is None else p.seed for p in params),
        "num_generated": tuple(num_generated),
    }


def params_from_header(header: HiddenHeader) -> list[SamplingParams]:
    """Sampling settings of each sequence of a micro-batch, validated like a local request's."""
    return [SamplingParams(temperature=t, top_p=p, top_k=k, seed=None if s < 0 else s)
            for t, p, k, s in zip(header.temperatures, header.top_ps, header.top_ks, header.seeds, strict=True)]
