"""The engine on the real default model (SmolLM2-135M-Instruct, prepared by `swarm models prepare`)."""

from __future__ import annotations

import pytest
import torch

from kernels import KvFormat
from peers.engine import Engine, EngineConfig, SamplingParams
from swarm import modelstore

pytestmark = pytest.mark.slow
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    folder = modelstore.models_dir() / modelstore.DEFAULT_MODEL
    if not modelstore.is_prepared(folder):
        pytest.skip(f"SmolLM2 is not prepared in {folder}: run `swarm models prepare` (make setup does)")
    return folder


class TestSmolLM2:
    def test_answers_the_capital_of_france(self, smollm2):
        engine = Engine.load(smollm2, EngineConfig(device="cpu", num_kv_blocks=64))
        engine.add("france", messages=FRANCE, params=SamplingParams(max_tokens=12))
        text = ""
        while engine.has_work():
            text += "".join(e.text for e in engine.step())
        assert "Paris" in text

    def test_greedy_tokens_equal_transformers(self, smollm2):
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
        engine = Engine.load(smollm2, EngineConfig(device="cpu", num_kv_blocks=64))
        prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time, in a land far away,"]
        ids = [engine.add(f"r{i}", p, params=SamplingParams(max_tokens=16, ignore_eos=True)) for i, p in enumerate(prompts)]
        outputs: dict[str, list[int]] = {}
        while engine.has_work():
            for e in engine.step():
                outputs.setdefault(e.request_id, []).extend(e.token_ids)
        for i, prompt_ids in enumerate(ids):
            x = torch.tensor([prompt_ids])
            ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt_ids):].tolist()
            assert outputs[f"r{i}"] == ref

    def test_four_bit_handoff_still_answers(self, smollm2):
        prefill = Engine.load(smollm2, EngineConfig(role="prefill", device="cpu", num_kv_blocks=64))
        decode = Engine.load(smollm2, EngineConfig(role="decode", device="cpu", num_kv_blocks=64))
        prefill.add("france", messages=FRANCE, params=SamplingParams(max_tokens=12))
        (first,) = prefill.step()
        blob = prefill.export_kv("france", KvFormat(bits=4))
        decode.import_kv("france", blob, prompt_token_ids=list(first.prompt_token_ids),
                         output_token_ids=list(first.token_ids), params=SamplingParams(max_tokens=12))
        text = first.text
        while decode.has_work():
            text += "".join(e.text for e in decode.step())
        assert "Paris" in text
