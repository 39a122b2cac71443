"""Helpers of the engine tests: a tiny random-weight Llama written as a real model folder (config.json,
safetensors, byte-level tokenizer, chat template), random prompts, and transformers' reference tokens.

A uniquely named module (not conftest.py): several test folders have a conftest, so importing one by
name is ambiguous."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from peers.engine import Engine, EngineConfig

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64},
    "tie_word_embeddings": False,
    "bos_token_id": 256,
    "eos_token_id": 257,
    "initializer_range": 0.25,
}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_tiny_model(folder: Path, config: dict = TINY_CONFIG, seed: int = 0) -> Path:
    """Write a random-weight Llama folder (weights seeded, so every run is the same model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    with torch.no_grad():  # RMSNorm weights start at 1; vary them so the test exercises them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_byte_tokenizer(folder)
    return folder


def write_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer: 256 byte tokens plus <s> (256) and </s> (257), and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}))


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable character for each byte 0..255, the alphabet of a ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_engine(folder: Path, **settings) -> Engine:
    """An engine on `folder` with a small KV cache (zeroing the default 1 GiB per engine is slow), on the CPU
    unless `device` says otherwise."""
    settings.setdefault("num_kv_blocks", 256)
    settings.setdefault("device", "cpu")  # the reference tokens are CPU fp32 ones, GPU or not
    return Engine.load(folder, EngineConfig(**settings))


def run_all(engine: Engine, max_steps: int = 10_000) -> dict[str, list[int]]:
    """Step until idle; the output token ids of every request that finished."""
    outputs: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return outputs
        for event in engine.step():
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
    raise AssertionError("engine did not finish within max_steps")


def random_prompts(count: int, seed: int, max_len_tokens: int = 60) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len_tokens, (count,), generator=g).tolist()
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(hf, prompt: list[int], max_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()
