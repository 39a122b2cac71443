"""A compact Llama-family forward pass over a layer range, reading its weights straight from safetensors.

RMSNorm, RoPE (default, linear or llama3 scaling), grouped-query attention over the paged KV cache,
SwiGLU; Llama 2/3, SmolLM2, Mistral and Qwen2 (q/k/v biases) folders load. Only the tensors of layers
[first, last) are read; the first stage also reads the embedding, the last the final norm and the head
(the embedding again when they are tied), each straight onto the engine's device. Tokens of a step are
packed: (tokens, hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from peers.engine.config import ModelConfig
from peers.engine.kv_cache import PagedKvCache
from peers.errors import EngineConfigError


@dataclass
class StepInput:
    """What one forward step needs besides the tokens: positions, cache slots and per-sequence lengths.

    Prefill steps start every sequence at position 0 and attend causally within it; decode steps feed
    one token per sequence and attend over the paged cache through `block_tables` and `mask`.
    """

    is_prefill: bool
    positions: torch.Tensor  # (tokens,)
    slots: torch.Tensor  # (tokens,) where each token's K/V goes
    query_lens: list[int]  # tokens per sequence, in packing order
    block_tables: torch.Tensor | None = None  # decode: (batch, max_blocks), padded with block 0
    mask: torch.Tensor | None = None  # decode: (1, batch, 1, max_blocks * block_size), 0 or -inf


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # (q_size + 2 * kv_size, hidden): q, k and v projections fused
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # (2 * intermediate, hidden): gate and up fused
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class LlamaStage:
    """Layers [first_layer, last_layer) of a Llama-family model, plus the embedding and/or head it owns."""

    def __init__(self, config: ModelConfig, first_layer: int, last_layer: int, dtype: torch.dtype,
                 embed: torch.Tensor | None, layers: list[LayerWeights], norm: torch.Tensor | None,
                 head: torch.Tensor | None):
        self.config = config
        self.first_layer = first_layer
        self.last_layer = last_layer
        self.dtype = dtype
        self.device = (embed if embed is not None else head if head is not None else layers[0].qkv).device
        self.embed = embed
        self.layers = layers
        self.norm = norm
        self.head = head
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * config.inv_freq()[None, :]  # (max_positions, head_dim // 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (max_positions, head_dim)
        self.cos = angles.cos().to(self.device, dtype)
        self.sin = angles.sin().to(self.device, dtype)

    @property
    def is_first(self) -> bool:
        return self.first_layer == 0

    @property
    def is_last(self) -> bool:
        return self.last_layer == self.config.num_layers

    @classmethod
    def load(cls, folder: Path, config: ModelConfig, first_layer: int, last_layer: int, dtype: torch.dtype,
             device: torch.device = torch.device("cpu")) -> LlamaStage:
        """Read only the tensors this stage needs from the folder's safetensors files, onto `device`."""
        reader = _TensorReader(folder, dtype, device)
        try:
            layers = [_load_layer(reader, config, i) for i in range(first_layer, last_layer)]
            is_first, is_last = first_layer == 0, last_layer == config.num_layers
            embed = reader.get("model.embed_tokens.weight") if is_first else None
            norm = reader.get("model.norm.weight") if is_last else None
            head = None
            if is_last:
                has_head = reader.has("lm_head.weight") and not config.is_embedding_tied
                head = reader.get("lm_head.weight" if has_head else "model.embed_tokens.weight")
                if embed is not None and not has_head:
                    head = embed
        finally:
            reader.close()
        return cls(config, first_layer, last_layer, dtype, embed, layers, norm, head)

    @torch.inference_mode()
    def forward(self, step: StepInput, cache: PagedKvCache, *, token_ids: torch.Tensor | None = None,
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Run the stage on packed tokens: token ids (tokens,) for the first stage, hidden states
        (tokens, hidden) otherwise. Returns fp32 logits (sequences, vocab) of each sequence's last token on
        the last stage, else the hidden states (tokens, hidden) for the next stage.
        """
        x = F.embedding(token_ids, self.embed) if self.is_first else hidden.to(self.device, self.dtype)
        cos, sin = self.cos[step.positions], self.sin[step.positions]  # (tokens, head_dim)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer, _rms_norm(x, layer.input_norm, self.config.rms_norm_eps), cos, sin, step, cache)
            x = x + _mlp(layer, _rms_norm(x, layer.post_norm, self.config.rms_norm_eps))
        if not self.is_last:
            return x
        ends = torch.tensor(step.query_lens, device=self.device).cumsum(0) - 1
        last = _rms_norm(x[ends], self.norm, self.config.rms_norm_eps)  # (sequences, hidden)
        return F.linear(last, self.head).float()

    def _attention(self, index: int, layer: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   step: StepInput, cache: PagedKvCache) -> torch.Tensor:
        c = self.config
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        qkv = F.linear(x, layer.qkv, layer.qkv_bias)
        q = qkv[:, :q_size].view(-1, c.num_heads, c.head_dim)  # (tokens, heads, head_dim)
        k = qkv[:, q_size:q_size + kv_size].view(-1, c.num_kv_heads, c.head_dim)
        v = qkv[:, q_size + kv_size:].view(-1, c.num_kv_heads, c.head_dim)
        q = _rope(q, cos, sin).transpose(0, 1)  # (heads, tokens, head_dim)
        k = _rope(k, cos, sin).transpose(0, 1)  # (kv_heads, tokens, head_dim)
        v = v.transpose(0, 1)
        cache.write(index, step.slots, k, v)
        if step.is_prefill:
            out = _prefill_attention(q, k, v, step.query_lens)
        else:
            out = _decode_attention(q, *cache.gather(index, step.block_tables), step.mask, c.num_kv_heads)
        return F.linear(out, layer.out)  # out: (tokens, heads * head_dim)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers: normalise in fp32, cast back, then scale (the fused op is bit-identical here)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (tokens, heads, head_dim) by per-token angles (tokens, head_dim), halves convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def _mlp(layer: LayerWeights, x: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, layer.down, layer.down_bias)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_lens: list[int]) -> torch.Tensor:
    """Causal attention within each packed sequence: q (heads, tokens, d), k/v (kv_heads, tokens, d)."""
    outs = []
    start = 0
    for n in query_lens:
        s = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[:, s], k[:, s], v[:, s], is_causal=True, enable_gqa=True))
        start += n
    out = torch.cat(outs, dim=1)  # (heads, tokens, head_dim)
    return out.transpose(0, 1).reshape(out.shape[1], -1)


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      kv_heads: int) -> torch.Tensor:
    """One query token per sequence over its paged context.

    q (heads, batch, d); keys/values (kv_heads, batch, context, d); mask (1, batch, 1, context).
    """
    heads, batch, head_dim = q.shape
    q = q.view(kv_heads, heads // kv_heads, batch, head_dim).transpose(1, 2)  # (kv_heads, batch, group, d)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * head_dim**-0.5  # (kv_heads, batch, group, ctx)
    probs = torch.softmax(scores + mask, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values)  # (kv_heads, batch, group, d)
    return out.permute(1, 0, 2, 3).reshape(batch, heads * head_dim)


class _TensorReader:
    """Which safetensors file holds which tensor; reads single tensors in the engine's dtype and device.

    Each file is opened once (memory-mapped) for the whole load; `close` releases them. safetensors puts
    each tensor straight on the device, so the model never sits whole in host memory as well.
    """

    def __init__(self, folder: Path, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        self.files = [safe_open(path, framework="pt", device=str(device))
                      for path in sorted(folder.glob("*.safetensors"))]
        self.file_of = {name: f for f in self.files for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)

    def has(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise EngineConfigError(f"tensor {name!r} is missing from the model's safetensors files")
        return self.file_of[name].get_tensor(name).to(self.dtype).contiguous()

    def get_optional(self, name: str) -> torch.Tensor | None:
        return self.get(name) if self.has(name) else None

    def close(self) -> None:
        self.files.clear()
        self.file_of.clear()


def _load_layer(reader: _TensorReader, config: ModelConfig, i: int) -> LayerWeights:
    p = f"model.layers.{i}."
    attn = [reader.get(f"{p}self_attn.{n}_proj.weight") for n in "qkv"]
    biases = [reader.get_optional(f"{p}self_attn.{n}_proj.bias") for n in "qkv"]
    mlp_biases = [reader.get_optional(f"{p}mlp.{n}_proj.bias") for n in ("gate", "up")]
    return LayerWeights(
        input_norm=reader.get(f"{p}input_layernorm.weight"),
        qkv=torch.cat(attn),
        qkv_bias=torch.cat(biases) if all(b is not None for b in biases) else None,
        out=reader.get(f"{p}self_attn.o_proj.weight"),
        post_norm=reader.get(f"{p}post_attention_layernorm.weight"),
        gate_up=torch.cat([reader.get(f"{p}mlp.gate_proj.weight"), reader.get(f"{p}mlp.up_proj.weight")]),
        gate_up_bias=torch.cat(mlp_biases) if all(b is not None for b in mlp_biases) else None,
        down=reader.get(f"{p}mlp.down_proj.weight"),
        down_bias=reader.get_optional(f"{p}mlp.down_proj.bias"),
    )
