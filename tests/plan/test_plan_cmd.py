"""`swarm plan` end to end through `swarm.cli.main`: the table, the JSON, and clear errors for bad input."""

from __future__ import annotations

import pytest

from swarm.cli import main
from swarm.hardware import load_cluster
from swarm.models import model_spec
from swarm.plan.validate import validate_plan
from swarm.wire.plan import Plan

BASE = ["plan", "--cluster", "cloud-32", "--model", "llama-30b", "--workload", "azure-conv"]


def test_plan_cloud32_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main([*BASE, "--budget-s", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prefill" in text and "decode" in text and "TPxPP" in text
    assert "goodput" in text and "TTFT p90" in text and "TPOT p90" in text
    plan = Plan.from_json(out.read_text())
    validate_plan(plan, load_cluster("cloud-32"), model_spec("llama-30b"))
    assert {g.role for g in plan.groups} == {"prefill", "decode"}
    assert len({load_cluster("cloud-32").gpu(g).name for g in plan.gpu_ids}) >= 3  # mixed GPU types


def test_json_to_stdout_is_pure_json(capsys):
    assert main([*BASE, "--budget-s", "0.5", "--rate", "2", "--slo-scale", "1.5", "--kv-bits", "16",
                 "--json", "-"]) == 0
    captured = capsys.readouterr()
    plan = Plan.from_json(captured.out)
    assert plan.model == "llama-30b"
    assert "TPxPP" in captured.err


def test_colocated_flag_plans_both_groups(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main([*BASE, "--budget-s", "0.5", "--colocated", "--json", str(out)]) == 0
    assert {g.role for g in Plan.from_json(out.read_text()).groups} == {"both"}


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_names_are_clear_errors(capsys):
    assert "cloud-32" in _error(capsys, ["plan", "--cluster", "nope", "--model", "llama-30b",
                                         "--workload", "azure-conv"])
    assert "llama-30b" in _error(capsys, ["plan", "--cluster", "cloud-32", "--model", "gpt-9",
                                          "--workload", "azure-conv"])
    assert "azure-conv" in _error(capsys, ["plan", "--cluster", "cloud-32", "--model", "llama-30b",
                                           "--workload", "nope"])


def test_malformed_cluster_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[host]]\nname = "a"\ngpu = "A40"\ncount = "four"\n')
    err = _error(capsys, ["plan", "--cluster", str(bad), "--model", "llama-7b", "--workload", "azure-conv"])
    assert "bad.toml" in err and "count" in err


def test_model_that_fits_nowhere_is_a_clear_error(capsys):
    err = _error(capsys, ["plan", "--cluster", "mixed-4", "--model", "llama-65b", "--workload", "azure-conv"])
    assert "llama-65b" in err and "GPUs" in err


def test_impossible_slo_is_a_clear_error(capsys):
    err = _error(capsys, [*BASE, "--ttft", "0.001", "--tpot", "0.0001", "--budget-s", "0.5"])
    assert "TPOT" in err or "TTFT" in err


def test_slo_flags_must_come_in_pairs(capsys):
    assert "--tpot" in _error(capsys, [*BASE, "--ttft", "1"])
    assert "--slo-scale" in _error(capsys, [*BASE, "--ttft", "1", "--tpot", "0.1", "--slo-scale", "2"])
    assert "slo-scale" in _error(capsys, [*BASE, "--slo-scale", "0"])


@pytest.mark.parametrize("flag", [["--rate", "-1"], ["--budget-s", "0"]])
def test_bad_numbers_are_clear_errors(capsys, flag):
    err = _error(capsys, [*BASE, *flag])
    assert flag[0] in err


def test_unwritable_json_path_is_a_clear_error(tmp_path, capsys):
    err = _error(capsys, [*BASE, "--budget-s", "0.3", "--json", str(tmp_path / "missing" / "plan.json")])
    assert "missing" in err
