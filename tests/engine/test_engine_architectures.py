"""Other Llama-family folders load and match transformers: Qwen2 (q/k/v biases, tied embeddings),
Mistral, and a Llama with linear RoPE scaling and tied embeddings."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import hf_greedy, make_engine, random_prompts, run_all

from peers.engine import SamplingParams
from peers.errors import EngineConfigError

BASE = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "initializer_range": 0.25, "bos_token_id": 256, "eos_token_id": 257}
VARIANTS = {
    "qwen2": ("Qwen2ForCausalLM", {**BASE, "model_type": "qwen2", "tie_word_embeddings": True, "rope_theta": 1e6}),
    "mistral": ("MistralForCausalLM", {**BASE, "model_type": "mistral", "tie_word_embeddings": False,
                                       "sliding_window": None}),
    "llama-linear-tied": ("LlamaForCausalLM", {**BASE, "model_type": "llama", "tie_word_embeddings": True,
                                               "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
}


def write_variant(folder, class_name: str, config: dict):
    import transformers

    cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    model = cls(cls.config_class(**config))
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_greedy_tokens_equal_transformers(tmp_path, variant):
    class_name, config = VARIANTS[variant]
    hf = write_variant(tmp_path, class_name, config)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    engine = make_engine(tmp_path)
    prompts = random_prompts(4, seed=31)
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", p, params=SamplingParams(max_tokens=10, ignore_eos=True))
    outputs = run_all(engine)
    assert [outputs[f"r{i}"] for i in range(4)] == [hf_greedy(hf, p, 10) for p in prompts]


def test_unsupported_architecture_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 10}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EngineConfigError, match="model_type 'gpt2' is not supported"):
        make_engine(tmp_path)
