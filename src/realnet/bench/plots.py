"""Line plots of an ablation axis as PNGs, like the paper's Fig. 5: x = a config value (the
retention ratio P), one line per value of another (the RRS mode), one panel per metric.

matplotlib is imported here only, through its object-oriented API on the Agg canvas, so no
global backend is switched and no display is needed.
"""

from __future__ import annotations

from pathlib import Path

from realnet.bench.tables import HEADERS


def _sorted_positions(xs: list) -> list:
    """The x values in plotting order: numeric order when all are numbers, else first-seen order."""
    unique = list(dict.fromkeys(xs))
    return sorted(unique) if all(isinstance(x, (int, float)) for x in unique) else unique


def _label(x) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def line_plot(path: Path, series: dict[str, list[tuple]], x_label: str, title: str) -> bool:
    """Write `series` ({line: [(x, (Image AUROC, Pixel AUROC, PRO) fractions, complete)]}) as a PNG
    with one panel per metric, in %. The x values are evenly spaced and labelled, as in the paper.
    A point averaged over only some of the dataset's categories (not `complete`) is drawn hollow,
    as the tables mark it. Returns False, and removes an earlier plot at `path`, when there is no
    point to draw: it would show figures the tables no longer do."""
    if not any(points for points in series.values()):
        Path(path).unlink(missing_ok=True)
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from realnet.engine.checkpoint import atomic_write

    positions = _sorted_positions([x for points in series.values() for x, *_ in points])
    figure = Figure(figsize=(4 * len(HEADERS), 3.6))
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(HEADERS))
    for metric, (panel, name) in enumerate(zip(panels, HEADERS)):
        for line, points in series.items():
            kept = sorted((positions.index(x), 100 * m[metric], complete) for x, m, complete in points
                          if m[metric] is not None)
            if kept:
                drawn = panel.plot([p for p, *_ in kept], [v for _, v, _ in kept], label=line)[0]
                for filled in (True, False):
                    shown = [(p, v) for p, v, complete in kept if complete is filled]
                    if shown:
                        panel.plot(*zip(*shown), linestyle="none", marker="o", color=drawn.get_color(),
                                   markerfacecolor=None if filled else "none")
        panel.set_xticks(range(len(positions)), [_label(x) for x in positions])
        panel.set_xlabel(x_label)
        panel.set_ylabel(f"{name} (%)")
        panel.grid(alpha=0.3)
    panels[0].legend()
    partial = any(not complete for points in series.values() for *_, complete in points)
    figure.suptitle(title + ("\nhollow: mean over only some of the categories" if partial else ""))
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return True
