"""A peer with two GPUs serves two groups at once, pinned with `--plan`: peer "duo" (declared RTX3090Tix2)
runs prefill group 0 on its GPU 0 and decode group 1 on its GPU 1, one engine each; peer "solo" (A40) is a
second prefill group whose KV also goes to duo's decode group. KV moves between two engines of one peer
and from another peer into the right one of duo's engines; the greedy answers (fp16 KV) equal one local
engine's, and `swarm status` shows both of duo's groups ready."""

from __future__ import annotations

import pytest
import trio
from e2e_helpers import local_tokens

from swarm.client import AsyncSwarmClient
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.client.status import format_status
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

pytestmark = pytest.mark.slow
MAX_TOKENS = 10
PEERS = [PeerSpec("duo", "RTX3090Tix2"), PeerSpec("solo", "A40")]


def two_gpu_plan(model_name: str) -> Plan:
    groups = (Group(0, "prefill", 1, 1, (Stage(("duo/0",), (0, 4)),)),
              Group(1, "decode", 1, 1, (Stage(("duo/1",), (0, 4)),)),
              Group(2, "prefill", 1, 1, (Stage(("solo/0",), (0, 4)),)))
    return Plan(PLAN_FORMAT, 0, model_name, groups, Routing({0: 0.5, 2: 0.5}, ((0, 1, 0.5), (2, 1, 0.5))))


def test_a_two_gpu_peer_serves_a_prefill_and_a_decode_group(tiny_model_dir, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(two_gpu_plan(tiny_model_dir.name).to_json())
    prompts = [f"two groups on one peer, prompt {i}" for i in range(6)]
    with LocalSwarm(PEERS, model=str(tiny_model_dir), kv_bits=16, extra_args=("--plan", str(plan_file))) as swarm:
        status = swarm.wait_for_plan(120)
        duo = next(m for m in status.members if m.host == "duo")
        assert [(g.group_id, g.role, g.device, g.is_ready) for g in duo.groups] == [
            (0, "prefill", "cpu", True), (1, "decode", "cpu", True)]
        table = format_status(status)
        assert "prefill  0" in table and "decode   1" in table

        async def answers() -> dict[str, list[int]]:
            async with AsyncSwarmClient([swarm.bootstrap_addr]) as client:
                out = {}

                async def one(prompt: str) -> None:
                    completion = await client.generate(prompt, max_tokens=MAX_TOKENS, ignore_eos=True)
                    out[prompt] = list(completion.token_ids)

                async with trio.open_nursery() as nursery:
                    for prompt in prompts:
                        nursery.start_soon(one, prompt)
                return out

        got = trio.run(answers)
        assert got == {prompt: local_tokens(tiny_model_dir, prompt, MAX_TOKENS) for prompt in prompts}
        log = swarm.log("duo")
        assert "serving group 0 (prefill, layers 0-4) on cpu and group 1 (decode, layers 0-4) on cpu" in log
