"""The engine's two configs: the model's shape read from a Hugging Face config.json, and the engine's
own settings (role, layer range, device, dtype, KV cache size, batch limits), both validated on construction.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from peers.errors import EngineConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
ROLES = ("both", "prefill", "decode")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family model, from its config.json (transformers 4.x and 5.x spellings)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, object], ...]  # sorted (key, value) pairs; empty for plain RoPE
    max_position_embeddings: int
    is_embedding_tied: bool
    has_attention_bias: bool
    has_mlp_bias: bool
    eos_token_ids: tuple[int, ...]
    sliding_window_tokens: int | None  # attention is full here, so the engine's context stops at the window
    fingerprint: str  # identifies these exact weights: a KV blob made by other weights is refused

    @classmethod
    def from_folder(cls, folder: Path) -> ModelConfig:
        """Read and validate `folder/config.json`; the fingerprint also covers the weight files."""
        path = folder / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise EngineConfigError(f"cannot read {path}: {e}") from e
        weights = sorted((f.name, f.stat().st_size, _content_sample(f)) for f in folder.glob("*.safetensors"))
        if not weights:
            raise EngineConfigError(f"{folder} has no *.safetensors weights; pass a folder with config.json + *.safetensors")
        return cls.from_dict(raw, weight_files=weights, where=str(path))

    @classmethod
    def from_dict(cls, raw: dict, *, weight_files: list[tuple], where: str = "config.json") -> ModelConfig:
        """Build from a parsed config.json dict (see `from_folder`)."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EngineConfigError(f"{where}: model_type {model_type!r} is not supported (use one of {SUPPORTED_MODEL_TYPES})")
        try:
            num_heads = int(raw["num_attention_heads"])
            hidden_size = int(raw["hidden_size"])
            rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
            eos = raw.get("eos_token_id")
            config = cls(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden_size,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
                head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                rope_scaling=tuple(sorted((k, v) for k, v in rope.items() if k != "rope_theta")),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                is_embedding_tied=bool(raw.get("tie_word_embeddings", False)),
                has_attention_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
                has_mlp_bias=bool(raw.get("mlp_bias", False)),
                eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
                sliding_window_tokens=_sliding_window(raw),
                fingerprint=_fingerprint(raw, weight_files),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineConfigError(f"{where}: missing or invalid field: {e}") from e
        config.validate(where)
        return config

    def validate(self, where: str) -> None:
        if self.num_heads % self.num_kv_heads:
            raise EngineConfigError(f"{where}: num_attention_heads {self.num_heads} is not a multiple of "
                                    f"num_key_value_heads {self.num_kv_heads}")
        rope_type = self.rope_type
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise EngineConfigError(f"{where}: rope type {rope_type!r} is not supported (use one of {SUPPORTED_ROPE_TYPES})")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.head_dim) <= 0:
            raise EngineConfigError(f"{where}: sizes must be positive")

    @property
    def rope_type(self) -> str:
        params = dict(self.rope_scaling)
        return str(params.get("rope_type", params.get("type", "default")))

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies (head_dim // 2,) in fp32, with the model's scaling, as transformers."""
        dim = self.head_dim
        freq = 1.0 / (self.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        params = dict(self.rope_scaling)
        if self.rope_type == "linear":
            return freq / float(params["factor"])
        if self.rope_type == "llama3":
            return _llama3_inv_freq(freq, params)
        return freq


def _llama3_inv_freq(freq: torch.Tensor, params: dict) -> torch.Tensor:
    """Llama 3's rope_scaling: long wavelengths stretched by `factor`, short kept, the middle blended."""
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old_context = float(params["original_max_position_embeddings"])
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > old_context / low, freq / factor, freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(is_medium, smoothed, scaled)


def _sliding_window(raw: dict) -> int | None:
    """The attention window if the model uses one (Mistral; Qwen2 only with use_sliding_window)."""
    window = raw.get("sliding_window")
    uses_window = raw.get("model_type") == "mistral" or raw.get("use_sliding_window", False)
    return int(window) if uses_window and window else None


def _content_sample(path: Path, num_samples: int = 16, sample_bytes: int = 4096) -> str:
    """A hash of a few evenly spaced slices of a weight file: tells apart weights of the same shape
    (another seed, another fine-tune) without reading gigabytes."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for i in range(num_samples):
            f.seek(max(0, size - sample_bytes) * i // max(1, num_samples - 1))
            digest.update(f.read(sample_bytes))
    return digest.hexdigest()[:32]


def _fingerprint(raw: dict, weight_files: list[tuple]) -> str:
    fields = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_parameters",
              "rope_scaling", "tie_word_embeddings", "_name_or_path", "_model_name_or_path")
    record = {"config": {k: raw.get(k) for k in fields}, "weights": weight_files}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EngineConfig:
    """What one engine serves and how much memory it may use.

    `first_layer`/`last_layer` give the half-open layer range [first, last) this engine holds; None for
    `last_layer` means up to the model's last layer. The first stage owns the embedding, the last the
    final norm and the head.
    """

    role: str = "both"
    first_layer: int = 0
    last_layer: int | None = None
    device: str = "auto"  # "auto": cuda when torch sees a GPU, else cpu; or "cpu", "cuda", "cuda:N"
    dtype: str = "auto"  # "auto": float32 on the CPU; bfloat16 on CUDA (float16 where the GPU lacks bf16)
    block_size_tokens: int = 16
    num_kv_blocks: int | None = None  # None: as many as `kv_cache_bytes` allows
    kv_cache_bytes: int = 1 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    max_model_len_tokens: int | None = None  # None: the model's max_position_embeddings

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise EngineConfigError(f"role {self.role!r} is not one of {ROLES}")
        if self.dtype not in DTYPES:
            raise EngineConfigError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        self.torch_device()  # raises if the device is malformed or absent
        if self.first_layer < 0 or (self.last_layer is not None and self.last_layer <= self.first_layer):
            raise EngineConfigError(f"layer range [{self.first_layer}, {self.last_layer}) is empty or negative")
        for name in ("block_size_tokens", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise EngineConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise EngineConfigError(f"num_kv_blocks must be positive, got {self.num_kv_blocks}")

    def torch_device(self) -> torch.device:
        """The device this engine runs on, with "auto" resolved and a CUDA index filled in.

        Raises:
            EngineConfigError: a malformed device, or a CUDA device this machine does not have.
        """
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise EngineConfigError(f"device {self.device!r} is not one of 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise EngineConfigError(f"device {self.device!r} was requested but torch sees no CUDA device (torch "
                                    f"{torch.__version__}, CUDA build: {torch.version.cuda}): use device 'cpu' or "
                                    "'auto', or install a CUDA build of torch on a machine with an NVIDIA GPU")
        index = torch.cuda.current_device() if self.device in ("auto", "cuda") else int(self.device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise EngineConfigError(f"device {self.device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                    f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)

    def torch_dtype(self) -> torch.dtype:
        """Weights' and activations' dtype, with "auto" resolved for this engine's device."""
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        device = self.torch_device()
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16  # Ampere+
