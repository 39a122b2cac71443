import json

import pytest

from swarm.errors import WireError
from swarm.wire import Group, Plan, Predicted, Routing, Stage, decode, encode

DESIGN_EXAMPLE = """{"format": 1, "epoch": 3, "model": "llama-30b",
 "groups": [{"id": 0, "role": "prefill", "tp": 2, "pp": 1,
             "stages": [{"gpus": ["a40-0/0", "a40-0/1"], "layers": [0, 60]}]},
            {"id": 5, "role": "decode", "tp": 1, "pp": 2,
             "stages": [{"gpus": ["a6000-0/0"], "layers": [0, 34]}, {"gpus": ["a6000-1/0"], "layers": [34, 60]}]}],
 "routing": {"prefill": {"0": 1.0}, "kv": [[0, 5, 1.0]]},
 "predicted": {"goodput_rps": 4.1, "slo_attainment": 0.93, "ttft_p90_s": 1.2, "tpot_p90_s": 0.09}}"""


def example() -> Plan:
    return Plan.from_json(DESIGN_EXAMPLE)


def test_design_example_parses_and_round_trips():
    plan = example()
    assert plan.group(5).gpu_ids == ["a6000-0/0", "a6000-1/0"]
    assert plan.predicted == Predicted(4.1, 0.93, 1.2, 0.09)
    assert Plan.from_json(plan.to_json()) == plan
    assert decode(encode(plan)) == plan
    assert json.loads(plan.to_json())["routing"]["prefill"] == {"0": 1.0}


def edit(path, value):
    doc = json.loads(DESIGN_EXAMPLE)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(doc)


@pytest.mark.parametrize("path, value, message", [
    (["groups", 0, "role"], "verify", "role must be one of"),
    (["groups", 0, "tp"], 3, "has 2 GPUs, tp is 3"),
    (["groups", 1, "stages", 1, "layers"], [30, 60], r"must start at 34"),
    (["groups", 1, "stages", 1, "layers"], [34, 50], "cover different numbers of layers"),
    (["groups", 1, "stages", 0, "gpus"], ["a40-0/0"], "already in another group"),
    (["groups", 1, "id"], 0, "group ids must be unique"),
    (["routing", "prefill"], {"0": 0.5}, "prefill shares sum to 0.5"),
    (["routing", "kv"], [[5, 0, 1.0]], "must go from a prefill/both group"),
    (["format"], 2, "format 2 is not supported"),
    (["epoch"], -1, "epoch must be >= 0"),
    (["groups", 0, "tp"], "2", "expected an integer"),
])
def test_invalid_plans_are_refused_with_the_reason(path, value, message):
    with pytest.raises(WireError, match=message):
        Plan.from_json(edit(path, value), source="plan.json")


def test_missing_field_and_bad_json():
    with pytest.raises(WireError, match="plan.json: missing field 'routing'"):
        Plan.from_json('{"format": 1, "epoch": 0, "model": "m", "groups": []}', source="plan.json")
    with pytest.raises(WireError, match="not valid JSON"):
        Plan.from_json("{", source="plan.json")


def test_colocated_group_keeps_its_kv():
    both = Group(0, "both", 1, 1, (Stage(("a/0",), (0, 4)),))
    plan = Plan(1, 0, "m", (both,), Routing({0: 1.0}, ((0, 0, 1.0),)))
    assert plan.routing.kv == ((0, 0, 1.0),)
    with pytest.raises(WireError, match="keeps its KV"):
        other = Group(1, "decode", 1, 1, (Stage(("b/0",), (0, 4)),))
        Plan(1, 0, "m", (both, other), Routing({0: 1.0}, ((0, 1, 1.0),)))
