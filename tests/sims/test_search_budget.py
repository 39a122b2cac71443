"""The search budget study (`sims.search_budget`) on a small cluster: one row per system and budget."""

from __future__ import annotations

from sims.search_budget import study
from swarm.plan.search import default_evaluations


def test_one_row_per_system_and_budget_with_its_evaluations_and_simulated_goodput():
    rates = [0.5, 2.0]
    rows = study(["azure-conv"], ["swarm", "hexgen-like"], [0.01, 0.1], rates, duration_s=10.0,
                 cluster_name="mixed-8", model_name="llama-7b")
    assert [(r["system"], r["budget_s"]) for r in rows] == [("swarm", 0.01), ("swarm", 0.1),
                                                             ("hexgen-like", 0.01), ("hexgen-like", 0.1)]
    for row in rows:
        assert row["evaluations"] == default_evaluations(row["budget_s"], 8)
        assert 0.0 <= row["simulated_goodput_rps"] <= max(rates) and row["predicted_goodput_rps"] > 0
        roles = {g[0] for g in row["groups"].split()}
        assert roles == ({"b"} if row["system"] == "hexgen-like" else {"p", "d"})
