"""`swarm status` output: the JSON form keeps every field; the table names roles, readiness and the plan."""

from __future__ import annotations

import json

from swarm.client.status import format_status, status_dict
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Predicted, Routing, Stage
from swarm.wire.requests import MemberStatus, StatusReply


def reply() -> StatusReply:
    plan = Plan(PLAN_FORMAT, 7, "smollm2", (Group(0, "prefill", 1, 1, (Stage(("a40/0",), (0, 30)),)),
                                            Group(1, "decode", 1, 1, (Stage(("ti/0",), (0, 30)),))),
                Routing({0: 1.0}, ((0, 1, 1.0),)), Predicted(3.5, 0.95, 0.2, 0.03))
    members = (
        MemberStatus("QmA40peer", "a40", "A40", 1, True, True, 0, "prefill", True, 2, 1, 4096, 12.5, 0.2),
        MemberStatus("QmTipeer", "ti", "RTX3090Ti", 1, True, True, 1, "decode", False, 0, 0, 8192, 0.0, 0.4),
        MemberStatus("QmBoot", "(bootstrap)", "-", 0, False, False, -1, "-", False, 0, 0, 0, 0.0, 0.1),
    )
    return StatusReply("QmBoot", "QmA40peer", 7, plan.to_json(None), members, 12.0)


def test_json_form_round_trips_the_plan_and_members():
    doc = json.loads(json.dumps(status_dict(reply())))
    assert doc["epoch"] == 7 and doc["coordinator_id"] == "QmA40peer"
    assert Plan.from_dict(doc["plan"]).groups[1].role == "decode"
    assert doc["members"][0]["num_queued"] == 2 and doc["members"][1]["is_ready"] is False


def test_table_shows_roles_readiness_coordinator_and_plan():
    text = format_status(reply())
    lines = text.splitlines()
    assert "plan epoch 7" in lines[0] and "2 serving peers" in lines[0]
    a40 = next(line for line in lines if line.startswith("a40 "))
    assert "A40x1*" in a40 and "prefill" in a40 and "yes" in a40 and "(coordinator)" in a40
    assert "no" in next(line for line in lines if line.startswith("ti "))
    assert "group 0: prefill" in text and "100% of requests" in text and "0->1 100%" in text
    assert "goodput 3.50 req/s" in text
