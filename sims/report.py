"""Experiment output: CSV tables, a markdown summary and the summary figures, under results/<name>/."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV (columns in first-seen order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(_cell(r.get(c, ""))) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(
    out_dir: Path, name: str, command: str, sections: list[tuple[str, str]], figures: dict
) -> Path:
    """results/<name>/summary.md: the command that made it, each section, and the figures as JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {name}\n", f"Made by: `{command}`\n"]
    for title, body in sections:
        parts.append(f"## {title}\n\n{body}")
    parts.append("## Figures\n\n```json\n" + json.dumps(clean(figures), indent=2) + "\n```\n")
    path = out_dir / "summary.md"
    path.write_text("\n".join(parts))
    return path


def clean(value):
    """JSON-safe: floats rounded to 4 significant digits, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else str(value)
    if hasattr(value, "item"):
        return clean(value.item())
    return value


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return value
