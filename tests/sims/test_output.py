"""The experiment plumbing: the CLI entry, the report writers and the figures."""

from __future__ import annotations

import json

import pytest

from sims import plots
from sims.errors import SimError
from sims.experiments import NAMES, run_experiment
from sims.report import clean, markdown_table, write_csv, write_summary
from swarm.cli import build_parser


def test_cli_knows_every_experiment():
    parser = build_parser("sim")
    for name in NAMES:
        args = parser.parse_args(["sim", name, "--quick", "--json", "--seed", "3"])
        assert (args.name, args.quick, args.json, args.seed) == (name, True, True, 3)


def test_unknown_experiment_is_refused():
    with pytest.raises(SimError, match="unknown experiment"):
        run_experiment("nope")


def test_report_files(tmp_path):
    rows = [{"a": 1, "b": 0.123456}, {"a": 2, "c": "x"}]
    path = write_csv(tmp_path / "t.csv", rows)
    assert path.read_text().splitlines() == ["a,b,c", "1,0.1235,", "2,,x"]
    assert "| 2 |  | x |" in markdown_table(rows, ["a", "b", "c"])
    summary = write_summary(tmp_path, "t", "swarm sim t", [("S", "body\n")], {"r": float("inf"), "x": 1 / 3})
    figures = json.loads(summary.read_text().split("```json\n")[1].split("```")[0])
    assert figures == {"r": "inf", "x": 0.3333}
    assert clean({"k": (1.23456789,)}) == {"k": [1.235]}


def test_figures_are_png_files(tmp_path):
    line = plots.lines(
        tmp_path / "l.png",
        {"a": ([1, 2, 3], [0.2, 0.5, 0.9])},
        title="t",
        xlabel="x",
        ylabel="y",
        hline=0.9,
        vlines=[(2, "event")],
    )
    bar = plots.bars(tmp_path / "b.png", {"g": {"s1": 1.0, "s2": 2.0}}, title="t", ylabel="y")
    for path in (line, bar):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_goodput_is_the_last_rate_meeting_the_target_even_after_an_early_dip():
    from sims.run import crossing

    assert crossing([1, 2, 4, 8], [0.88, 0.95, 0.91, 0.71], 0.9) == pytest.approx(4 + 4 * 0.01 / 0.2)
    assert crossing([1, 2], [0.5, 0.4], 0.9) == 0.0
    assert crossing([1, 2], [0.95, 0.93], 0.9) == 2.0
