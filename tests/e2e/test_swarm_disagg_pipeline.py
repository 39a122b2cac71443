"""Disaggregated pipelines across peers, pinned with `--plan`: a prefill replica of 2 stages (layers 0-1 and
1-4 of the tiny model) hands its KV, slice by slice, to a decode replica split differently (0-3 and 3-4).
The greedy answers equal one local engine's with fp16 KV; a decode stage killed mid-request ends that
request with an error instead of a hang."""

from __future__ import annotations

import signal

import pytest

from peers.engine import Engine, EngineConfig, SamplingParams
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.errors import SwarmError
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

pytestmark = pytest.mark.slow
MAX_TOKENS = 10
LONG_TOKENS = 240  # the tiny model's context is 256 tokens


def disagg_plan(model_name: str) -> Plan:
    prefill = Group(0, "prefill", 1, 2, (Stage(("pre-a/0",), (0, 1)), Stage(("pre-b/0",), (1, 4))))
    decode = Group(1, "decode", 1, 2, (Stage(("dec-a/0",), (0, 3)), Stage(("dec-b/0",), (3, 4))))
    return Plan(PLAN_FORMAT, 0, model_name, (prefill, decode), Routing({0: 1.0}, ((0, 1, 1.0),)))


def local_tokens(folder, prompt: str) -> list[int]:
    engine = Engine.load(folder, EngineConfig(num_kv_blocks=64))
    engine.add("r", prompt, params=SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    tokens = []
    while engine.has_work():
        tokens += [t for e in engine.step() for t in e.token_ids]
    return tokens


def test_prefill_pipeline_hands_kv_to_a_decode_pipeline_split_differently(tiny_model_dir, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(disagg_plan(tiny_model_dir.name).to_json())
    peers = [PeerSpec("pre-a", "A40"), PeerSpec("pre-b", "A40"), PeerSpec("dec-a", "RTX3090Ti"),
             PeerSpec("dec-b", "RTX3090Ti")]
    with LocalSwarm(peers, model=str(tiny_model_dir), kv_bits=16, extra_args=("--plan", str(plan_file))) as swarm:
        status = swarm.wait_for_plan(120)
        assert {m.host: (m.group_id, m.role) for m in status.members if m.is_serving} == {
            "pre-a": (0, "prefill"), "pre-b": (0, "prefill"), "dec-a": (1, "decode"), "dec-b": (1, "decode")}
        client = swarm.client()
        for prompt in ("disaggregated", "two pipelines, two splits"):
            completion = client.generate(prompt, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert list(completion.token_ids) == local_tokens(tiny_model_dir, prompt)
        assert "stage 2 of 2" in swarm.log("pre-b") and "stage 2 of 2" in swarm.log("dec-b")

        chunks = swarm.client(timeout_s=60.0).stream("a long answer", max_tokens=LONG_TOKENS, ignore_eos=True)
        with pytest.raises(SwarmError) as failure:
            for i, chunk in enumerate(chunks):
                assert chunk.finish_reason == ""  # the request must not finish: its decode stage is killed
                if i == 1:  # the first token came from the prefill replica, this one from the decode replica
                    swarm.kill("dec-b", signal.SIGKILL)
        assert "went away" in str(failure.value) or "failed" in str(failure.value)
