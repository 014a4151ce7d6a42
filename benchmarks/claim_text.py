"""A claim's result as text, rendered from the summary.json files its commands wrote.

One sentence per part of a summary, in ``PARTS`` order; a part renders when its section is in the summary.
Only figures that ``--deterministic`` keeps identical from run to run appear (no wall-clock time).
"""
from __future__ import annotations

import shlex
from typing import Any, Callable, Dict, List, Optional, Sequence

Summary = Dict[str, Any]


def pct(value: float) -> str:
    """A percentage as the app prints test figures (two decimals)."""
    return f"{value:.2f}%"


def share(value: float) -> str:
    """A share of samples or MACs (one decimal)."""
    return f"{value:.1f}%"


def accuracy(s: Summary) -> Optional[str]:
    """Test top-1, with the final exit's beside it when samples leave early."""
    if "top1" not in s or "members" in s:
        return None
    text = f"test top-1 {pct(s['top1'])}"
    if has_exits(s) and "top1_final_exit" in s:
        text += f" with early exit (final exit {pct(s['top1_final_exit'])})"
    return text


def has_exits(s: Summary) -> bool:
    """True when the summary's model has exits before the final classifier."""
    return len(s.get("exits") or []) > 1


def exits(s: Summary) -> Optional[str]:
    """The share of test samples leaving at each exit, and the calibration that set the thresholds."""
    if not has_exits(s):
        return None
    text = "taken on test: " + ", ".join(f"{e['name']} {share(e['taken_pct'])}" for e in s["exits"])
    cal = s.get("calibration")
    if cal and cal.get("valid"):
        v = cal["valid"]
        text += (f"; thresholds chosen for {cal['target']} on the validation split ({pct(v['top1'])} against "
                 f"{pct(v['final_top1'])} at the final exit)")
    return text


def macs(s: Summary) -> Optional[str]:
    """Expected MACs per sample against the dense backbone's."""
    if "macs_expected" not in s or not s.get("macs_dense"):
        return None
    text = (f"{s['macs_expected']:,.0f} MACs per sample expected, {share(100 * s['macs_expected'] / s['macs_dense'])}"
            f" of the backbone's {s['macs_dense']:,}")
    if s.get("sparsity", 0) >= 0.05 and "macs_expected_effective" in s:
        text += f" ({s['macs_expected_effective']:,.0f} counting only non-zero weights)"
    return text


def sparsity(s: Summary) -> Optional[str]:
    """Weight sparsity and non-zero parameters."""
    if "params" not in s:
        return None
    if s.get("sparsity", 0) < 0.05:
        return f"{s['params']:,} parameters"
    return f"weight sparsity {share(s['sparsity'])}, {s['params_nnz']:,} of {s['params']:,} parameters non-zero"


def anytime(s: Summary) -> Optional[str]:
    """Each classifier alone on the test split, at its MACs."""
    rows = s.get("anytime")
    if not rows or len(rows) < 2:
        return None
    return "each classifier alone: " + ", ".join(f"{r['name']} {share(r['top1'])} at {r['macs_pct']:.0f}%"
                                                 for r in rows) + " of the backbone's MACs"


def routing(s: Summary) -> Optional[str]:
    """The routed blocks executed per sample, block by block."""
    r = s.get("routing")
    if not r:
        return None
    blocks = ", ".join(f"{b['name']} {b['executed_pct']:.1f}%" for b in r.get("blocks", []))
    return (f"{r.get('class', 'routing')}: {r['executed_blocks_pct']:.1f}% of the routed blocks executed "
            f"({blocks}), {r['macs_pct']:.1f}% of the backbone's MACs (the decisions included)")


def quantization(s: Summary) -> Optional[str]:
    """What was quantized, and how."""
    q = s.get("quantization")
    if not q:
        return None
    d = q.get("defaults", {})
    text = f"{q['layers']} layers quantized"
    if d:
        text += (f" (weights {d['bits_weights']}-bit {d['mode_weights'].lower().replace('_', ' ')}"
                 f"{', per channel' if d.get('per_channel_wts') else ''}; activations {d['bits_activations']}-bit "
                 f"{d['mode_activations'].lower().replace('_', ' ')})")
    return text + (f", statistics {q['statistics']}" if q.get("statistics") else "")


def export(s: Summary) -> Optional[str]:
    """What was exported."""
    e = s.get("export")
    if not e:
        return None
    folders = sorted({f.split("/")[0] + "/" for f in e.get("files", []) if "/" in f})
    return f"exported to {e['format'].upper()} ({', '.join(folders)})"


def cascade(s: Summary) -> Optional[str]:
    """A cascade's members alone, who answered on test, and the cascade's figures."""
    if "members" not in s:
        return None
    members = s["members"]
    alone = ", ".join(f"{m['name']} {pct(m['top1_alone'])}" for m in members)
    taken = ", ".join(f"{m['name']} {share(m['taken_pct'])}" for m in members)
    t, cal = s["test"], s.get("calibration") or {}
    text = f"members alone {alone}; answered on test: {taken}"
    if cal.get("valid"):
        text += (f" (thresholds {', '.join(f'{x:g}' for x in cal['thresholds'])} chosen for {cal['target']} on the "
                 f"validation split: {pct(cal['valid']['top1'])} against {pct(cal['valid']['final_top1'])})")
    return (text + f"; the cascade {pct(t['top1'])} at {share(100 * t['macs_fraction'])} of the last member's MACs"
            + ("; real = simulated" if t.get("real_equals_simulated") else ""))


def distillation(s: Summary) -> Optional[str]:
    """The teacher a student was taught by, and how."""
    kd = s.get("kd")
    if not kd:
        return None
    return (f"taught by {kd['teacher']} (temperature {kd['temperature']:g}, distillation weight "
            f"{kd['distill_weight']:g}, student weight {kd['student_weight']:g})")


#: the parts of a summary's text, in order
PARTS: List[Callable[[Summary], Optional[str]]] = [accuracy, distillation, cascade, exits, macs, sparsity, anytime,
                                                   routing, quantization, export]


def summary_text(s: Summary) -> str:
    """One summary's sentences."""
    parts = [text for text in (part(s) for part in PARTS) if text]
    return "; ".join(parts)


def run_name(command: str) -> str:
    """What a command's run is called: its ``-n`` name, else its architecture."""
    argv = shlex.split(command)
    if len(argv) > 2 and not argv[2].startswith("-"):  # a subcommand (cascade, tiers, ...)
        return argv[2]
    for flag in ("-n", "--name", "--arch", "-a"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    return "the run"


def render(commands: Sequence[str], summaries: Sequence[Summary], note: str = "") -> str:
    """The result of a claim's commands: each run's sentences (named when there are several)."""
    if len(summaries) == 1:
        body = summary_text(summaries[0])
        return f"Result of this command: {body}." if not note else f"{note}: {body}."
    runs = [f"Run {run_name(c)}: {summary_text(s)}" for c, s in zip(commands, summaries)]
    return f"{note or 'Results of these commands'}. " + ". ".join(runs) + "."
