"""The experiments' figures (matplotlib, Agg backend, imported only here and only when plotting)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lines(
    path: Path,
    series: dict[str, tuple[list, list]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    hline: float | None = None,
    steps: bool = False,
    vlines: list[tuple[float, str]] | None = None,
    ylim: tuple[float, float] | None = None,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """One line per series {label: (xs, ys)}, with an optional target line and event markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
        if steps:
            ax.step(xs, ys, where="post", label=label)
        else:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=f"target {hline:g}")
    for x, text in vlines or []:
        ax.axvline(x, color="red", linestyle=":", linewidth=1)
        ax.annotate(text, (x, 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="red", rotation=90)
    _finish(ax, title, xlabel, ylabel, ylim, logx, logy)
    return _save(plt, fig, path)


def bars(
    path: Path, groups: dict[str, dict[str, float]], *, title: str, ylabel: str, logy: bool = False
) -> Path:
    """Grouped bars: {group label: {series label: value}}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    labels = list(groups)
    names = list(dict.fromkeys(k for g in groups.values() for k in g))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [groups[g].get(name, 0.0) for g in labels], width=width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    _finish(ax, title, "", ylabel, None, False, logy)
    return _save(plt, fig, path)


def _finish(ax, title, xlabel, ylabel, ylim, logx, logy) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
