"""The real SmolLM2 through a 2-peer swarm with 4-bit KV on the wire (skipped if the model is not prepared).

A prefill engine handing 4-bit KV to a decode engine in this process is the reference: the swarm must
give exactly its tokens. Against a single engine that keeps its fp32 KV, 4-bit KV agrees on the first
token always (prefill is unchanged) and on most later ones (notes/stack.md: about 95% teacher-forced).
"""

from __future__ import annotations

import pytest
import torch

from kernels import KvFormat
from peers.engine import Engine, EngineConfig, SamplingParams
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.errors import ModelError
from swarm.modelstore import resolve_model

pytestmark = pytest.mark.slow

PROMPTS = ("What is the capital of France?", "Name three primary colors.")
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def model_dir():
    try:
        return resolve_model(None)
    except ModelError as e:
        pytest.skip(f"the default model is not prepared ({e})")


def run_to_end(engine: Engine) -> list[int]:
    tokens = []
    while engine.has_work():
        tokens += [t for e in engine.step() for t in e.token_ids]
    return tokens


def reference(model_dir, prompt: str) -> tuple[list[int], list[int]]:
    """(tokens with a 4-bit KV hand-off, tokens of one engine with its own KV), one torch thread as the peers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        messages = [{"role": "user", "content": prompt}]
        params = SamplingParams(max_tokens=MAX_TOKENS)
        prefill = Engine.load(model_dir, EngineConfig(role="prefill", kv_cache_bytes=64 << 20))
        decode = Engine.load(model_dir, EngineConfig(role="decode", kv_cache_bytes=64 << 20))
        prefill.add("r", messages=messages, params=params)
        (first,) = prefill.step()
        blob = prefill.export_kv("r", KvFormat(bits=4))
        decode.import_kv("r", blob, prompt_token_ids=list(first.prompt_token_ids),
                         output_token_ids=list(first.token_ids), params=params)
        handed_off = list(first.token_ids) + run_to_end(decode)
        both = Engine.load(model_dir, EngineConfig(kv_cache_bytes=64 << 20))
        both.add("r", messages=messages, params=params)
        return handed_off, run_to_end(both)
    finally:
        torch.set_num_threads(threads)


def test_real_model_through_the_swarm_with_4_bit_kv(model_dir):
    with LocalSwarm([PeerSpec("peer-a40", "A40"), PeerSpec("peer-3090ti", "RTX3090Ti")], kv_bits=4) as swarm:
        status = swarm.wait_for_plan(150)
        assert {m.role for m in status.members if m.is_serving} == {"prefill", "decode"}
        client = swarm.client()
        answers = [client.generate(messages=[{"role": "user", "content": p}], max_tokens=MAX_TOKENS) for p in PROMPTS]
    agree, total = 0, 0
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        handed_off, own_kv = reference(model_dir, prompt)
        assert list(answer.token_ids) == handed_off
        assert answer.token_ids[0] == own_kv[0]
        agree += sum(a == b for a, b in zip(answer.token_ids, own_kv, strict=False))
        total += min(len(own_kv), len(answer.token_ids))
    assert "Paris" in answers[0].text
    print(f"4-bit KV: {agree}/{total} greedy tokens equal to the fp32-KV engine")
