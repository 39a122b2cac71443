"""`Plan`: the deployment the coordinator publishes (and `swarm plan --json` writes).

JSON form (DESIGN.md section 4):
    {"format": 1, "epoch": 3, "model": "llama-30b",
     "groups": [{"id": 0, "role": "prefill", "tp": 2, "pp": 1,
                 "stages": [{"gpus": ["a40-0/0", "a40-0/1"], "layers": [0, 60]}]}],
     "routing": {"prefill": {"0": 0.25}, "kv": [[0, 5, 0.125]]},
     "predicted": {"goodput_rps": 4.1, "slo_attainment": 0.93, "ttft_p90_s": 1.2, "tpot_p90_s": 0.09}}
A `both` group (a colocated replica that prefills and decodes) routes its KV to itself: [g, g, share].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from swarm.errors import WireError
from swarm.wire.codec import message

PLAN_FORMAT = 1
ROLES = ("prefill", "decode", "both")
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: `tp` GPUs holding layers [layers[0], layers[1])."""

    gpus: tuple[str, ...]
    layers: tuple[int, int]


@dataclass(frozen=True)
class Group:
    """One model replica: `pp` stages of `tp` GPUs each, serving one phase."""

    id: int
    role: str
    tp: int
    pp: int
    stages: tuple[Stage, ...]

    @property
    def gpu_ids(self) -> list[str]:
        return [g for stage in self.stages for g in stage.gpus]

    @property
    def num_layers(self) -> int:
        return self.stages[-1].layers[1]


@dataclass(frozen=True)
class Routing:
    """Request shares per prefill group, and KV shares per (prefill, decode) pair; both sum to 1."""

    prefill: dict[int, float]
    kv: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True)
class Predicted:
    goodput_rps: float = 0.0
    slo_attainment: float = 0.0
    ttft_p90_s: float = 0.0
    tpot_p90_s: float = 0.0


@message(2)
@dataclass(frozen=True)
class Plan:
    format: int
    epoch: int
    model: str
    groups: tuple[Group, ...]
    routing: Routing
    predicted: Predicted = field(default_factory=Predicted)

    def __post_init__(self) -> None:
        check_plan(self)

    @property
    def gpu_ids(self) -> list[str]:
        return [g for group in self.groups for g in group.gpu_ids]

    def group(self, group_id: int) -> Group:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def with_epoch(self, epoch: int) -> Plan:
        return replace(self, epoch=epoch)

    def to_dict(self) -> dict:
        return {
            "format": self.format, "epoch": self.epoch, "model": self.model,
            "groups": [{"id": g.id, "role": g.role, "tp": g.tp, "pp": g.pp,
                        "stages": [{"gpus": list(s.gpus), "layers": list(s.layers)} for s in g.stages]}
                       for g in self.groups],
            "routing": {"prefill": {str(k): v for k, v in self.routing.prefill.items()},
                        "kv": [list(pair) for pair in self.routing.kv]},
            "predicted": {"goodput_rps": self.predicted.goodput_rps,
                          "slo_attainment": self.predicted.slo_attainment,
                          "ttft_p90_s": self.predicted.ttft_p90_s, "tpot_p90_s": self.predicted.tpot_p90_s},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, doc: object, source: str = "plan") -> Plan:
        """A plan from its JSON object; WireError names the field that is wrong."""
        if not isinstance(doc, dict):
            raise WireError(f"{source}: a plan must be a JSON object")
        try:
            groups = tuple(
                Group(id=_int(g["id"]), role=g["role"], tp=_int(g["tp"]), pp=_int(g["pp"]),
                      stages=tuple(Stage(gpus=tuple(s["gpus"]), layers=(_int(s["layers"][0]), _int(s["layers"][1])))
                                   for s in g["stages"]))
                for g in doc["groups"])
            routing = doc["routing"]
            prefill = {_group_key(k): float(v) for k, v in routing["prefill"].items()}
            kv = tuple((_int(p), _int(d), float(s)) for p, d, s in routing["kv"])
            predicted = Predicted(**{k: float(v) for k, v in doc.get("predicted", {}).items()})
            return cls(format=_int(doc["format"]), epoch=_int(doc["epoch"]), model=str(doc["model"]),
                       groups=groups, routing=Routing(prefill, kv), predicted=predicted)
        except WireError as e:
            raise WireError(f"{source}: {e}") from None
        except KeyError as e:
            raise WireError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError, IndexError) as e:
            raise WireError(f"{source}: malformed plan: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise WireError(f"{source}: not valid JSON: {e}") from None
        return cls.from_dict(doc, source)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"expected an integer, got {value!r}")
    return value


def _group_key(key: object) -> int:
    """JSON object keys are strings: routing.prefill is {"0": 0.25}."""
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return _int(key)


def check_plan(plan: Plan) -> None:
    """Structural checks that need no cluster or model: ids, roles, stage shapes, layer cover, shares."""
    if plan.format != PLAN_FORMAT:
        raise WireError(f"plan format {plan.format} is not supported (expected {PLAN_FORMAT})")
    if plan.epoch < 0:
        raise WireError(f"plan epoch must be >= 0, got {plan.epoch}")
    ids = [g.id for g in plan.groups]
    if len(set(ids)) != len(ids):
        raise WireError(f"plan group ids must be unique, got {ids}")
    seen: set[str] = set()
    num_layers = {g.num_layers for g in plan.groups if g.stages}
    if len(num_layers) > 1:
        raise WireError(f"plan groups cover different numbers of layers: {sorted(num_layers)}")
    for g in plan.groups:
        _check_group(g, seen)
    _check_routing(plan)


def _check_group(g: Group, seen: set[str]) -> None:
    where = f"plan group {g.id}"
    if g.role not in ROLES:
        raise WireError(f"{where}: role must be one of {ROLES}, got {g.role!r}")
    if g.tp < 1 or g.pp < 1 or len(g.stages) != g.pp:
        raise WireError(f"{where}: needs tp >= 1, pp >= 1 and exactly pp stages (tp={g.tp}, pp={g.pp}, "
                        f"{len(g.stages)} stages)")
    start = 0
    for i, s in enumerate(g.stages):
        if len(s.gpus) != g.tp:
            raise WireError(f"{where} stage {i}: has {len(s.gpus)} GPUs, tp is {g.tp}")
        a, b = s.layers
        if a != start or b <= a:
            raise WireError(f"{where} stage {i}: layers {list(s.layers)} must start at {start} and be non-empty")
        start = b
        for gpu in s.gpus:
            if gpu in seen:
                raise WireError(f"{where}: GPU {gpu!r} is already in another group or stage")
            seen.add(gpu)


def _check_routing(plan: Plan) -> None:
    roles = {g.id: g.role for g in plan.groups}
    prefill, kv = plan.routing.prefill, plan.routing.kv
    for gid, share in prefill.items():
        if roles.get(gid) not in ("prefill", "both"):
            raise WireError(f"plan routing.prefill names group {gid}, which is not a prefill or both group")
        if not (0 <= share <= 1 + SHARE_TOLERANCE) or math.isnan(share):
            raise WireError(f"plan routing.prefill[{gid}] = {share} is not a share in [0, 1]")
    for p, d, share in kv:
        if roles.get(p) not in ("prefill", "both") or roles.get(d) not in ("decode", "both"):
            raise WireError(f"plan routing.kv pair [{p}, {d}] must go from a prefill/both group to a "
                            "decode/both group")
        if (roles[p] == "both" or roles[d] == "both") and p != d:
            raise WireError(f"plan routing.kv pair [{p}, {d}]: a 'both' group keeps its KV ([g, g, share])")
        if not (0 <= share <= 1 + SHARE_TOLERANCE) or math.isnan(share):
            raise WireError(f"plan routing.kv [{p}, {d}] share {share} is not in [0, 1]")
    if plan.groups and prefill:
        for name, total in (("prefill", sum(prefill.values())), ("kv", sum(s for _, _, s in kv))):
            if abs(total - 1) > 1e-4:
                raise WireError(f"plan routing.{name} shares sum to {total:.6f}, not 1")
        for gid in prefill:
            out = sum(s for p, _, s in kv if p == gid)
            if abs(out - prefill[gid]) > 1e-4:
                raise WireError(f"plan routing: prefill group {gid} takes {prefill[gid]:.6f} of requests but "
                                f"sends {out:.6f} of KV")
