"""The seed papers' claims next to what the side-by-side benchmark measured, with a verdict computed from it.

Each claim names the rows it compares. A difference of two test top-1 figures is given with its 95% interval
(two independent proportions on the same number of images: the rows come from different trainings). A claim of
a bounded loss ("at <= 0.5 point") holds when the measured difference is within it; a claim of equal accuracy
holds when the interval reaches 0 (no distinguishable loss). The text is generated from the
table's rows and the trainings' summaries, never typed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

Z95 = 1.959964


@dataclass
class Row:
    """What a claim reads of one row of the table."""

    method: str
    top1: float
    images: int
    macs_pct: float
    speed: Optional[Dict[str, Any]] = None
    note: str = ""

    def speedup(self, batch: str) -> Optional[float]:
        """Measured speedup over the backbone at ``batch`` (None when not timed)."""
        if not self.speed:
            return None
        return self.speed[batch]["backbone"] / self.speed[batch]["real"]


def difference(a: Row, b: Row) -> tuple:
    """``a.top1 - b.top1`` in points with its 95% interval (independent proportions)."""
    pa, pb = a.top1 / 100.0, b.top1 / 100.0
    se = math.sqrt(pa * (1 - pa) / a.images + pb * (1 - pb) / b.images)
    d = a.top1 - b.top1
    return d, d - 100 * Z95 * se, d + 100 * Z95 * se


def describe(row: Row) -> str:
    """A row as ``method: top-1 at MACs (speedups)``."""
    text = f"{row.method}: {row.top1:.2f}% at {row.macs_pct:.1f}% of the MACs"
    if row.speed:
        text += f", {row.speedup('1'):.2f}x at batch 1 and {row.speedup('256'):.2f}x at batch 256"
    return text


def gap(a: Row, b: Row) -> str:
    """The top-1 difference of ``a`` over ``b`` with its interval."""
    d, low, high = difference(a, b)
    return f"{d:+.2f} points (95% interval {low:+.2f} to {high:+.2f})"


def within(a: Row, b: Row, tolerance: float) -> bool:
    """True when ``a`` measured at most ``tolerance`` points below ``b`` (a claim of a bounded loss)."""
    return difference(a, b)[0] >= -tolerance


def not_worse(a: Row, b: Row) -> bool:
    """True when ``a`` is not distinguishably less accurate than ``b`` (the 95% interval reaches 0)."""
    return difference(a, b)[2] >= 0.0


def branchynet(rows: Mapping[str, Row]) -> Optional[str]:
    """Exits keep accuracy and cut time: the plain and the certified entropy rule at drop=0.5."""
    base = rows.get("backbone alone (resnet20_cifar)")
    found = [rows.get(name) for name in ("exits, entropy, drop=0.5", "exits, entropy, drop=0.5, certified at 0.9")]
    if base is None or not any(found):
        return None
    parts = []
    for ee in (r for r in found if r is not None):
        faster = ee.speed is not None and min(ee.speedup("1"), ee.speedup("256")) > 1.0
        holds = within(ee, base, 0.5) and faster
        parts.append(f"{describe(ee)}; against the backbone trained alone ({base.top1:.2f}%): {gap(ee, base)}: "
                     f"{verdict(holds)} within 0.5 point" + ("" if faster else " (not faster, or not timed)"))
    return "; ".join(parts) + "."


def distillation(rows: Mapping[str, Row]) -> Optional[str]:
    """A student taught by a larger teacher is more accurate than the student trained alone."""
    alone = rows.get("backbone alone (lenet_mnist)")
    taught = next((r for name, r in rows.items() if name.startswith("lenet_mnist taught by")), None)
    teacher = rows.get("backbone alone (resnet20_cifar)")
    if alone is None or taught is None:
        return None
    d, low, _ = difference(taught, alone)
    text = f"{taught.method}: {taught.top1:.2f}% against {alone.top1:.2f}% alone ({gap(taught, alone)})"
    if teacher is not None:
        text += f"; the teacher alone {teacher.top1:.2f}%"
    return text + f": {verdict(low > 0)}" + ("" if low > 0 else " (no difference the test split can tell)") + "."


def routing(rows: Mapping[str, Row]) -> Optional[str]:
    """SkipNet and BlockDrop: fewer blocks at a small loss."""
    base = rows.get("backbone alone (resnet20_cifar)")
    found = [r for name, r in rows.items() if name.startswith(("SkipNet", "BlockDrop"))]
    if base is None or not found:
        return None
    parts = [f"{describe(r)} ({r.note}); against the backbone: {gap(r, base)}, "
             f"{verdict(within(r, base, 0.5) and r.macs_pct < 100.0)} at <= 0.5 point" for r in found]
    return "; ".join(parts) + "."


def cheaper_at_equal_accuracy(name: str) -> Callable[[Mapping[str, Row]], Optional[str]]:
    """A method against the entropy rule at the same target: it holds when the method needs fewer MACs (by half
    a point of the backbone's or more) at a top-1 not below the rule's (the interval reaches 0), or is more
    accurate (the interval above 0) at no more MACs."""
    def claim(rows: Mapping[str, Row]) -> Optional[str]:
        parts = []
        for target in ("drop=0.5", "drop=1", "macs=0.5"):
            method, rule = rows.get(f"{name}, {target}"), rows.get(f"exits, entropy, {target}")
            if method is None or rule is None:
                continue
            cheaper = method.macs_pct <= rule.macs_pct - 0.5 and not_worse(method, rule)
            better = difference(method, rule)[1] > 0 and method.macs_pct <= rule.macs_pct + 0.5
            parts.append(f"{target}: {method.top1:.2f}% at {method.macs_pct:.1f}% against the entropy rule's "
                         f"{rule.top1:.2f}% at {rule.macs_pct:.1f}% ({gap(method, rule)}): {verdict(cheaper or better)}")
        return "; ".join(parts) + "." if parts else None
    return claim


def anytime(summaries: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """MSDNet: accurate classifiers at every budget, against ResNet-20's branches at the same MACs."""
    msd, res = summaries.get("msdnet"), summaries.get("resnet20_exits")
    if not msd or not res or "anytime" not in msd or "anytime" not in res:
        return None
    parts = []
    for exit_ in res["anytime"][:-1]:
        near = [c for c in msd["anytime"] if c["macs"] <= exit_["macs"]]
        best = max(near, key=lambda c: c["top1"]) if near else None
        if best is None:
            parts.append(f"ResNet-20's {exit_['name']} {exit_['top1']:.2f}% at {exit_['macs'] / 1e6:.1f}M MACs: "
                         f"no MSDNet classifier is as cheap")
            continue
        parts.append(f"at {exit_['macs'] / 1e6:.1f}M MACs ResNet-20's {exit_['name']} gives {exit_['top1']:.2f}%, "
                     f"MSDNet's {best['name']} ({best['macs'] / 1e6:.1f}M) {best['top1']:.2f}%")
    holds = all("no MSDNet" not in p for p in parts) and all(
        max((c["top1"] for c in msd["anytime"] if c["macs"] <= e["macs"]), default=0.0) >= e["top1"]
        for e in res["anytime"][:-1])
    return "; ".join(parts) + f". {verdict(holds)} at every ResNet-20 exit's budget."


def imta(summaries: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Row]) -> Optional[str]:
    """IMTA: its techniques make the early classifiers better."""
    plain, with_imta = summaries.get("resnet20_exits"), summaries.get("imta")
    if not plain or not with_imta:
        return None
    pairs = [(a, b) for a, b in zip(plain["anytime"], with_imta["anytime"])]
    each = ", ".join(f"{a['name']} {a['top1']:.2f} -> {b['top1']:.2f}%" for a, b in pairs)
    better = all(b["top1"] >= a["top1"] for a, b in pairs[:-1])
    text = f"each classifier alone, plain -> IMTA: {each}. {verdict(better)} for every early exit"
    rule, imta_row = rows.get("exits, entropy, drop=0.5"), rows.get("IMTA exits, entropy, drop=0.5")
    if rule and imta_row:
        text += (f"; calibrated for drop=0.5: {imta_row.top1:.2f}% at {imta_row.macs_pct:.1f}% against "
                 f"{rule.top1:.2f}% at {rule.macs_pct:.1f}% without the options ({gap(imta_row, rule)})")
    return text + "."


def verdict(holds: bool) -> str:
    """The verdict's word."""
    return "Holds" if holds else "Does not hold here"


def claims_markdown(rows: Sequence[Row], summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The claims table as Markdown: paper, claim, what the benchmark measured."""
    by_name: Dict[str, Row] = {r.method: r for r in rows}
    claims = [
        ("BranchyNet (Teerapittayanon et al., 2016)", "exits keep accuracy and cut time", branchynet(by_name)),
        ("SkipNet (Wang et al., 2018), BlockDrop (Wu et al., 2018)", "fewer blocks at <= 0.5 point",
         routing(by_name)),
        ("Differentiable exits (Scardapane et al., 2020)", "fewer MACs than the entropy rule at equal accuracy",
         cheaper_at_equal_accuracy("gates (trained jointly)")(by_name)),
        ("Learned policy (Bolukbasi et al., 2017)", "fewer MACs than the entropy rule at equal accuracy",
         cheaper_at_equal_accuracy("learned policy")(by_name)),
        ("Knowledge distillation (Hinton et al., 2015)", "a student taught by a larger teacher beats it alone",
         distillation(by_name)),
        ("MSDNet (Huang et al., 2018)", "anytime accuracy: better early classifiers at the same cost",
         anytime(summaries)),
        ("IMTA (Li et al., 2019)", "better early exits", imta(summaries, by_name)),
    ]
    lines = ["| paper | claim | measured here |", "|---|---|---|"]
    for paper, claim, measured in claims:
        lines.append(f"| {paper} | {claim} | {measured or 'not measured in this run'} |")
    return "\n".join(lines) + "\n"
