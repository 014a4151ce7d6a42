"""What a sweep writes: the results table (results.csv and results.md), the Pareto-front plot (pareto.png) and
the winning trial's schedule that ``distill-ee sweep --best`` prints."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, List, Optional

from tabulate import tabulate

from ..atomic import atomic_path, atomic_write_csv, atomic_write_text
from ..errors import DistillEEError
from .sweep_space import Sweep, schedule_text, trial_argv


def result_rows(sweep: Sweep, study: Any, out: Optional[Path] = None) -> List[List[Any]]:
    """Header and one row per trial: number, each param, each objective, state, run directory (relative to
    ``out`` when it lies there)."""
    trials = study.get_trials(deepcopy=False)
    retry_of = {t.system_attrs["retry_history"][-1]: t.number for t in trials
                if t.system_attrs.get("retry_history")}
    rows: List[List[Any]] = [["trial", *[p.key for p in sweep.params], *[o.key for o in sweep.objectives],
                              "state", "run_dir"]]
    for t in trials:
        if t.user_attrs.get("surplus"):
            continue
        state = t.state.name + (f" (retried as {retry_of[t.number]})" if t.number in retry_of else "")
        values = list(t.values) if t.values else [""] * len(sweep.objectives)
        rows.append([t.number, *[t.params.get(p.key, "") for p in sweep.params],
                     *[_fmt(v) for v in values], state, _shown(t.user_attrs.get("run_dir", ""), out)])
    return rows


def _shown(run_dir: str, out: Optional[Path]) -> str:
    """``run_dir`` relative to the sweep directory ``out`` when it is inside it (another worker's stays whole)."""
    if not run_dir or out is None:
        return run_dir
    try:
        return str(Path(run_dir).resolve().relative_to(out.resolve()))
    except ValueError:
        return run_dir


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_results(sweep: Sweep, study: Any, out: Path) -> str:
    """Write results.csv, results.md and pareto.png into ``out``; the Markdown table."""
    rows = result_rows(sweep, study, out)
    atomic_write_csv(out / "results.csv", rows, lineterminator="\n")
    table = tabulate(rows[1:], headers=rows[0], tablefmt="github")
    front = ", ".join(str(t.number) for t in best_trials(sweep, study)) or "none"
    kind = "best trial" if len(sweep.objectives) == 1 else "Pareto front"
    text = f"# Sweep {sweep.study_name}\n\n{table}\n\n{kind}: {front}\n"
    atomic_write_text(out / "results.md", text)
    plot(sweep, study, out / "pareto.png")
    return text


def best_trials(sweep: Sweep, study: Any) -> List[Any]:
    """The best trial (one objective) or the Pareto set sorted by the first objective, best first."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    if len(sweep.objectives) == 1:
        return [study.best_trial]
    sign = -1.0 if sweep.objectives[0].direction == "maximize" else 1.0
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def best_text(sweep: Sweep, study: Any) -> str:
    """The winning trial's schedule, its flags as a comment header, ready to run."""
    winners = best_trials(sweep, study)
    if not winners:
        raise DistillEEError(f"{sweep.file}: the sweep {sweep.study_name!r} has no complete trial yet")
    best = winners[0]
    values = dict(best.params)
    argv = trial_argv(sweep, values, "SCHEDULE.yaml")
    scores = ", ".join(f"{o.key} {v:.6g}" for o, v in zip(sweep.objectives, best.values))
    lines = [f"# Best trial of sweep {sweep.study_name}: trial {best.number} ({scores})"]
    if len(sweep.objectives) > 1:
        lines.append(f"# Several objectives: this is the first trial of the Pareto set ({len(winners)} trials) by "
                     f"{sweep.objectives[0].key} ({sweep.objectives[0].direction})")
    lines.append(f"# Flags: python compress_classifier.py {shlex.join(argv)}")
    lines.append(f"# Values: {json.dumps(values)}")
    return schedule_text(sweep, values, "\n".join(lines) + "\n")


def plot(sweep: Sweep, study: Any, path: Path) -> Optional[Path]:
    """The Pareto front of the first two objectives (or the objective by trial for one); None without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    front = {t.number for t in best_trials(sweep, study)}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = [o.key for o in sweep.objectives]
    if len(names) == 1:
        ax.plot([t.number for t in complete], [t.value for t in complete], "o-", label=names[0])
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{names[0]} ({sweep.objectives[0].direction})")
    else:
        others = [t for t in complete if t.number not in front]
        best = sorted((t for t in complete if t.number in front), key=lambda t: t.values[0])
        ax.scatter([t.values[0] for t in others], [t.values[1] for t in others], c="grey", label="trials")
        ax.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", c="C3", label="Pareto front")
        for t in complete:
            ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize=7)
        ax.set_xlabel(f"{names[0]} ({sweep.objectives[0].direction})")
        ax.set_ylabel(f"{names[1]} ({sweep.objectives[1].direction})")
    ax.set_title(f"Sweep {sweep.study_name}")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
