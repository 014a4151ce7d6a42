"""The calibration's trade-off files: ``tradeoff.csv``, ``tradeoff.png`` (the accuracy-vs-MACs Pareto front
with the chosen point) and ``exit_fractions.png`` (where the samples leave)."""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..atomic import atomic_write_csv
from ..early_exit.tradeoff import TradeoffPoint
from ..errors import ConfigError

def write_tradeoff(points: Sequence[TradeoffPoint], chosen: TradeoffPoint, out_dir: str, *,
                   final: Optional[TradeoffPoint] = None, exit_names: Optional[Sequence[str]] = None,
                   guides: Optional[Mapping[str, float]] = None, split: str = "validation",
                   certified: Sequence[TradeoffPoint] = (), learned: Sequence[Any] = (),
                   front_test: Optional[Sequence[TradeoffPoint]] = None, rule: str = "thresholds") -> List[str]:
    """Write ``tradeoff.csv``, ``tradeoff.png`` and ``exit_fractions.png`` into ``out_dir``; their paths.

    ``exit_names`` names every output (final classifier last); ``guides`` may hold a ``top1`` floor and/or a
    ``macs_fraction`` budget, drawn as dashed lines; ``final`` is the final-exit-only point; ``certified`` are
    the settings a guarantee certified (the certified region, shaded). ``learned`` is a learned policy's curve
    (``PolicyPoint`` per trade-off): the CSV then also names each row's ``rule`` and trade-off, and gives the
    test figures beside the validation ones (``front_test``: the test point of each front point).
    """
    names = list(exit_names) if exit_names is not None else _default_names(len(chosen.taken_pct))
    if len(names) != len(chosen.taken_pct):
        raise ConfigError(f"need {len(chosen.taken_pct)} output names (exits, then the final classifier), "
                          f"got {len(names)}")
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in ("tradeoff.csv", "tradeoff.png", "exit_fractions.png")]
    if learned:
        _write_policy_csv(paths[0], points, front_test, learned, chosen, final, names, rule)
    else:
        _write_csv(paths[0], points, chosen, final, names)
    _plot_front(paths[1], points, chosen, final, guides or {}, split, certified, learned)
    _plot_fractions(paths[2], chosen, names, split)
    return paths


def _default_names(outputs: int) -> List[str]:
    return [f"exit{k + 1}" for k in range(outputs - 1)] + ["final"]


def _write_csv(path: str, points: Sequence[TradeoffPoint], chosen: TradeoffPoint,
               final: Optional[TradeoffPoint], names: List[str]) -> None:
    """One row per front point, cheapest first; ``role`` marks the chosen and final-only settings (added as
    rows of their own when they are not on the front)."""
    rows = [[p, "front"] for p in points]
    for extra, role in ((final, "final only"), (chosen, "chosen")):
        if extra is None:
            continue
        same = [r for r in rows if r[0].thresholds == extra.thresholds]
        for r in same:
            r[1] = role
        if not same:
            rows.append([extra, role])
    header = ([f"threshold_{n}" for n in names[:-1]] + ["top1", "expected_macs", "macs_fraction"]
              + [f"taken_pct_{n}" for n in names] + ["role"])
    atomic_write_csv(path, [header] + [
        ["off" if t is None else repr(t) for t in point.thresholds]
        + [f"{point.top1:.4f}", f"{point.expected_macs:.3f}", f"{point.macs_fraction:.6f}"]
        + [f"{v:.4f}" for v in point.taken_pct] + [role]
        for point, role in sorted(rows, key=lambda r: (r[0].expected_macs, -r[0].top1))])


def _write_policy_csv(path: str, points: Sequence[TradeoffPoint], points_test: Optional[Sequence[TradeoffPoint]],
                      learned: Sequence[Any], chosen: TradeoffPoint, final: Optional[TradeoffPoint],
                      names: List[str], rule: str) -> None:
    """The threshold rule's front and the learned policy's curve, validation figures with test ones beside."""
    tests = list(points_test) if points_test is not None else [None] * len(points)
    rows = [[rule, "", p, t, "front"] for p, t in zip(points, tests)]
    rows += [["learned", f"{q.tradeoff:g}", q.valid, q.test, "chosen" if q.valid is chosen else "learned"]
             for q in learned]
    if final is not None:
        rows.append(["final only", "", final, None, "final only"])
    header = (["rule", "tradeoff"] + [f"threshold_{n}" for n in names[:-1]]
              + ["top1", "expected_macs", "macs_fraction", "test_top1", "test_macs_fraction"]
              + [f"taken_pct_{n}" for n in names] + ["role"])
    atomic_write_csv(path, [header] + [
        [name, tradeoff] + ["off" if t is None else repr(t) for t in point.thresholds]
        + [f"{point.top1:.4f}", f"{point.expected_macs:.3f}", f"{point.macs_fraction:.6f}"]
        + ([f"{test.top1:.4f}", f"{test.macs_fraction:.6f}"] if test is not None else ["", ""])
        + [f"{v:.4f}" for v in point.taken_pct] + [role]
        for name, tradeoff, point, test, role in rows])


def figure(width: float, height: float, columns: int = 1) -> Tuple[Any, Any]:
    """A figure drawn by the Agg canvas directly (no pyplot: no global backend or state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def _plot_front(path: str, points: Sequence[TradeoffPoint], chosen: TradeoffPoint,
                final: Optional[TradeoffPoint], guides: Mapping[str, float], split: str,
                certified: Sequence[TradeoffPoint] = (), learned: Sequence[Any] = ()) -> None:
    """Left: the whole front (legend); right: zoomed near the final exit's accuracy (labels)."""
    fig, axes = figure(12.0, 4.8, 2)
    xs = [100.0 * p.macs_fraction for p in points]
    ys = [p.top1 for p in points]
    marks = [(chosen, "*", "tab:red", 15, "chosen")]
    if final is not None:
        marks.append((final, "s", "black", 8, "final exit only"))
    reference = final.top1 if final is not None else max(ys + [chosen.top1])
    low = min(chosen.top1, reference) - max(2.0, 2.0 * abs(reference - chosen.top1))
    for ax, zoom in zip(axes, (False, True)):
        ax.step(xs, ys, where="post", color="tab:blue", linewidth=1.2,
                label="Pareto front (searched settings)" if not learned else "entropy thresholds (Pareto front)")
        ax.plot(xs, ys, "o", color="tab:blue", markersize=2.5)
        if learned:
            curve = sorted(learned, key=lambda q: q.valid.macs_fraction)
            ax.plot([100.0 * q.valid.macs_fraction for q in curve], [q.valid.top1 for q in curve], "D-",
                    color="tab:orange", markersize=4, linewidth=1.0, label="learned policy (trade-off sweep)")
        if certified:
            cheapest = min(100.0 * p.macs_fraction for p in certified)
            ax.axvspan(cheapest, max(xs + [100.0 * p.macs_fraction for p in certified]), color="tab:green",
                       alpha=0.08, label="certified region (guarantee)")
            ax.plot([100.0 * p.macs_fraction for p in certified], [p.top1 for p in certified], "o",
                    color="tab:green", markersize=4, label="certified settings")
        if "top1" in guides:
            ax.axhline(guides["top1"], color="gray", linestyle="--", linewidth=1, label="accuracy floor (target)")
        if "macs_fraction" in guides:
            ax.axvline(100.0 * guides["macs_fraction"], color="gray", linestyle=":", linewidth=1,
                       label="MACs budget (target)")
        if zoom:
            near = [x for x, y in zip(xs, ys) if y >= low] + [100.0 * m[0].macs_fraction for m in marks]
            ax.set_xlim(min(near) - 3.0, max(near) + 3.0)
            ax.set_ylim(low, max(ys + [m[0].top1 for m in marks]) + 0.5)
        for point, marker, color, size, name in marks:
            label = f"{name}: {point.top1:.2f}% @ {100 * point.macs_fraction:.1f}% MACs"
            _mark(ax, point, marker, color, size, label, zoom)
        ax.set_xlabel("expected MACs per sample (% of the backbone without exits)")
        ax.set_ylabel(f"top-1 on the {split} split (%)")
        ax.grid(True, alpha=0.3)
        if zoom:
            ax.set_title(f"zoom near the final exit's accuracy ({split})")
        else:
            ax.set_title(f"accuracy vs cost of exit {'decisions' if learned else 'thresholds'} ({split})")
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _mark(ax: Any, point: TradeoffPoint, marker: str, color: str, size: float, label: str, text: bool) -> None:
    """A marker (with ``label`` in the legend), and the label written next to it when ``text``."""
    x, y = 100.0 * point.macs_fraction, point.top1
    ax.plot([x], [y], marker, color=color, markersize=size, label=label, zorder=5, linestyle="none")
    if text:
        left, right = ax.get_xlim()
        on_left = (x - left) < 0.5 * (right - left)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(12 if on_left else -12, -14),
                    ha="left" if on_left else "right", fontsize=8, color=color)


def _plot_fractions(path: str, chosen: TradeoffPoint, names: List[str], split: str) -> None:
    fig, (ax,) = figure(max(5.5, 1.4 * len(names) + 2.0), 4.0)
    colors = ["tab:orange"] * (len(names) - 1) + ["tab:blue"]
    ticks = [f"{n}\n({'off' if t is None else f'threshold {t:.4g}'})" for n, t in zip(names, chosen.thresholds)]
    bars = ax.bar(ticks + [names[-1]], chosen.taken_pct, color=colors)
    for bar, pct in zip(bars, chosen.taken_pct):
        ax.annotate(f"{pct:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=9)
    ax.set_ylim(0, 110)
    ax.set_ylabel(f"share of {split} samples (%)")
    ax.set_title(f"where the {split} samples leave at the chosen thresholds", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
