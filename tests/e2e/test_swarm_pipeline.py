"""A replica split across two peers (layers 0-2 and 2-4 of the tiny model), pinned with `--plan`:
hidden states pass between the peers and the answers equal one local engine's."""

from __future__ import annotations

import pytest
import trio
from e2e_helpers import local_tokens

from swarm.client import AsyncSwarmClient
from swarm.client.localswarm import LocalSwarm, PeerSpec
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

pytestmark = pytest.mark.slow
MAX_TOKENS = 10


def pipeline_plan(model_name: str) -> Plan:
    stages = (Stage(("p-head/0",), (0, 2)), Stage(("p-tail/0",), (2, 4)))
    return Plan(PLAN_FORMAT, 0, model_name, (Group(0, "both", 1, 2, stages),), Routing({0: 1.0}, ((0, 0, 1.0),)))


def test_two_peer_pipeline_replica_serves_like_one_engine(tiny_model_dir, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(pipeline_plan(tiny_model_dir.name).to_json())
    peers = [PeerSpec("p-head", "A40"), PeerSpec("p-tail", "RTX3090Ti")]
    with LocalSwarm(peers, model=str(tiny_model_dir), extra_args=("--plan", str(plan_file))) as swarm:
        status = swarm.wait_for_plan(120)
        assert {m.host: (m.group_id, m.role) for m in status.members if m.is_serving} == {
            "p-head": (0, "both"), "p-tail": (0, "both")}
        client = swarm.client()
        for prompt in ("pipeline", "two stages on two peers"):
            completion = client.generate(prompt, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert list(completion.token_ids) == local_tokens(tiny_model_dir, prompt, MAX_TOKENS)

        async def concurrent() -> list[int]:
            async with AsyncSwarmClient([swarm.bootstrap_addr]) as many:
                counts = []

                async def one(i: int) -> None:
                    completion = await many.generate(f"request {i}", max_tokens=MAX_TOKENS, ignore_eos=True)
                    counts.append(completion.num_tokens)

                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(one, i)
                return counts

        assert trio.run(concurrent) == [MAX_TOKENS] * 4
        assert "stage 1 of 2" in swarm.log("p-head") and "stage 2 of 2" in swarm.log("p-tail")
