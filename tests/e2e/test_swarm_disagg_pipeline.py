"""Disaggregated pipelines across peers, pinned with `--plan`: a prefill replica of 2 stages (layers 0-1 and
1-4 of the tiny model) hands its KV, slice by slice, to a decode replica split differently (0-3 and 3-4).
The greedy answers equal one local engine's with fp16 KV; a decode stage killed mid-request ends that
request with an error instead of a hang. The real SmolLM2 (30 layers; skipped if not prepared) goes from
prefill [0,10)+[10,30) to decode [0,20)+[20,30) and equals the in-process fp16 hand-off token for token."""

from __future__ import annotations

import signal

import pytest
import torch
from e2e_helpers import local_tokens

from kernels import KvFormat
from peers.engine import Engine, EngineConfig, SamplingParams
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.errors import ModelError, SwarmError
from swarm.modelstore import resolve_model
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

pytestmark = pytest.mark.slow
MAX_TOKENS = 10
LONG_TOKENS = 240  # the tiny model's context is 256 tokens


PEERS = [PeerSpec("pre-a", "A40"), PeerSpec("pre-b", "A40"), PeerSpec("dec-a", "RTX3090Ti"),
         PeerSpec("dec-b", "RTX3090Ti")]


def disagg_plan(model_name: str, prefill_cut: int = 1, decode_cut: int = 3, num_layers: int = 4) -> Plan:
    prefill = Group(0, "prefill", 1, 2, (Stage(("pre-a/0",), (0, prefill_cut)),
                                         Stage(("pre-b/0",), (prefill_cut, num_layers))))
    decode = Group(1, "decode", 1, 2, (Stage(("dec-a/0",), (0, decode_cut)),
                                       Stage(("dec-b/0",), (decode_cut, num_layers))))
    return Plan(PLAN_FORMAT, 0, model_name, (prefill, decode), Routing({0: 1.0}, ((0, 1, 1.0),)))


def test_prefill_pipeline_hands_kv_to_a_decode_pipeline_split_differently(tiny_model_dir, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(disagg_plan(tiny_model_dir.name).to_json())
    with LocalSwarm(PEERS, model=str(tiny_model_dir), kv_bits=16, extra_args=("--plan", str(plan_file))) as swarm:
        status = swarm.wait_for_plan(120)
        assert {m.host: (m.group_id, m.role) for m in status.members if m.is_serving} == {
            "pre-a": (0, "prefill"), "pre-b": (0, "prefill"), "dec-a": (1, "decode"), "dec-b": (1, "decode")}
        client = swarm.client()
        for prompt in ("disaggregated", "two pipelines, two splits"):
            completion = client.generate(prompt, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert list(completion.token_ids) == local_tokens(tiny_model_dir, prompt, MAX_TOKENS)
        assert "stage 2 of 2" in swarm.log("pre-b") and "stage 2 of 2" in swarm.log("dec-b")

        chunks = swarm.client(timeout_s=60.0).stream("a long answer", max_tokens=LONG_TOKENS, ignore_eos=True)
        with pytest.raises(SwarmError) as failure:
            for i, chunk in enumerate(chunks):
                assert chunk.finish_reason == ""  # the request must not finish: its decode stage is killed
                if i == 1:  # the first token came from the prefill replica, this one from the decode replica
                    swarm.kill("dec-b", signal.SIGKILL)
        assert "went away" in str(failure.value) or "failed" in str(failure.value)


def handed_off_tokens(model_dir, prompt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(tokens of an in-process prefill -> fp16 KV -> decode hand-off, tokens of one engine), one torch
    thread as the peers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        messages = [{"role": "user", "content": prompt}]
        params = SamplingParams(max_tokens=max_tokens)
        prefill = Engine.load(model_dir, EngineConfig(role="prefill", kv_cache_bytes=64 << 20))
        decode = Engine.load(model_dir, EngineConfig(role="decode", kv_cache_bytes=64 << 20))
        prefill.add("r", messages=messages, params=params)
        (first,) = prefill.step()
        decode.import_kv("r", prefill.export_kv("r", KvFormat(bits=16)), prompt_token_ids=list(first.prompt_token_ids),
                         output_token_ids=list(first.token_ids), params=params)
        both = Engine.load(model_dir, EngineConfig(kv_cache_bytes=64 << 20))
        both.add("r", messages=messages, params=params)
        tokens = {}
        for engine in (decode, both):
            tokens[engine] = []
            while engine.has_work():
                tokens[engine] += [t for e in engine.step() for t in e.token_ids]
        return list(first.token_ids) + tokens[decode], tokens[both]
    finally:
        torch.set_num_threads(threads)


def test_smollm2_prefill_pipeline_to_a_decode_pipeline_split_differently(tmp_path):
    try:
        model_dir = resolve_model(None)
    except ModelError as e:
        pytest.skip(f"the default model is not prepared ({e})")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(disagg_plan(model_dir.name, prefill_cut=10, decode_cut=20, num_layers=30).to_json())
    prompt = "What is the capital of France?"
    with LocalSwarm(PEERS, kv_bits=16, extra_args=("--plan", str(plan_file))) as swarm:
        swarm.wait_for_plan(180)
        answer = swarm.client().generate(messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS)
    handed_off, own_kv = handed_off_tokens(model_dir, prompt, MAX_TOKENS)
    assert list(answer.token_ids) == handed_off
    assert "Paris" in answer.text
    print(f"fp16 KV through two pipelines: {sum(a == b for a, b in zip(answer.token_ids, own_kv, strict=False))}"
          f"/{len(own_kv)} greedy tokens equal to the fp32-KV engine")
