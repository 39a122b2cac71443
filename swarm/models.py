"""Model specs: the shapes and sizes of Llama-family models, by name or from a Hugging Face config.

Everything the planner and the simulator need to know about a model: layers, widths, heads (GQA
aware), parameter bytes per layer and KV bytes per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only Llama-family transformer."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_context_tokens: int
    tied_embeddings: bool = False
    dtype_bytes: int = 2  # weights and KV in fp16/bf16

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                      "vocab_size", "max_context_tokens", "dtype_bytes"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ModelError(f"model {self.name!r}: {field} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ModelError(f"model {self.name!r}: hidden_size {self.hidden_size} must divide by num_heads "
                             f"{self.num_heads}, which must divide by num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        attention = self.hidden_size * (self.hidden_size + 2 * self.kv_dim) + self.hidden_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attention + mlp + 2 * self.hidden_size  # two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """Final norm plus LM head (the head shares the embedding when tied)."""
        return self.hidden_size + (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    @property
    def num_params(self) -> int:
        return self.num_layers * self.params_per_layer + self.embedding_params + self.head_params

    @property
    def layer_bytes(self) -> int:
        return self.params_per_layer * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    def stage_weight_bytes(self, first_layer: int, last_layer: int) -> int:
        """Weight bytes of a pipeline stage holding layers [first_layer, last_layer)."""
        size = (last_layer - first_layer) * self.layer_bytes
        if first_layer == 0:
            size += self.embedding_params * self.dtype_bytes
        if last_layer == self.num_layers:
            size += self.head_params * self.dtype_bytes
        return size

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer, at dtype_bytes per element."""
        return 2 * self.kv_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * self.kv_bytes_per_token_layer

    @property
    def flops_per_token(self) -> float:
        """Matmul FLOPs of one token through all layers and the head (2 per multiply-add), no attention."""
        return 2.0 * (self.num_layers * (self.params_per_layer - 2 * self.hidden_size)
                      + self.vocab_size * self.hidden_size)

    def attention_flops(self, num_tokens: int, context_tokens: int) -> float:
        """FLOPs of QK^T and PV for `num_tokens` queries over `context_tokens` keys, all layers."""
        return 4.0 * self.num_layers * num_tokens * context_tokens * self.hidden_size

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "") -> ModelSpec:
        """A spec from a Hugging Face `config.json` (Llama, Mistral, Qwen2 and the like)."""
        try:
            num_heads = int(config["num_attention_heads"])
            return cls(
                name=name or str(config.get("_name_or_path") or config.get("model_type", "model")),
                num_layers=int(config["num_hidden_layers"]),
                hidden_size=int(config["hidden_size"]),
                num_heads=num_heads,
                num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                max_context_tokens=int(config.get("max_position_embeddings", 4096)),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as e:
            raise ModelError(f"model config {name!r} lacks the field {e.args[0]!r}: is it a Llama-family "
                             "config.json?") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"model config {name!r} has a malformed field: {e}") from None


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
           context: int, tied: bool = False) -> ModelSpec:
    return ModelSpec(name, layers, hidden, heads, kv_heads, ffn, vocab, context, tied)


# Shapes from each model's published config.json.
KNOWN_MODELS = {
    spec.name: spec for spec in (
        _llama("llama-7b", 32, 4096, 32, 32, 11008, 32000, 2048),
        _llama("llama-13b", 40, 5120, 40, 40, 13824, 32000, 2048),
        _llama("llama-30b", 60, 6656, 52, 52, 17920, 32000, 2048),
        _llama("llama-65b", 80, 8192, 64, 64, 22016, 32000, 2048),
        _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        _llama("smollm2-135m", 30, 576, 9, 3, 1536, 49152, 8192, tied=True),
    )
}
_ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "llama2-70b": "llama-2-70b", "llama3-8b": "llama-3-8b",
            "llama3-70b": "llama-3-70b"}


def model_spec(name_or_path: str | Path) -> ModelSpec:
    """A spec by known name (`llama-30b`), or from a folder or file holding a HF `config.json`."""
    key = str(name_or_path).lower()
    key = _ALIASES.get(key, key)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"cannot read model config {str(path)!r}: {e}") from None
        if not isinstance(config, dict):
            raise ModelError(f"model config {str(path)!r} must be a JSON object")
        return ModelSpec.from_hf_config(config, name=path.parent.name)
    raise ModelError(f"unknown model {str(name_or_path)!r}: use one of {', '.join(KNOWN_MODELS)} "
                     "or a folder with a Hugging Face config.json")
