"""Rows of a Big/Little cascade: the little net answers the samples it is confident about, the big one the rest.

Built as ``distill-ee cascade`` builds one (``distill_ee.apputils.cascade_cli``): both members from their
checkpoints, the little one answering by its max-prob against a threshold chosen on the validation split for
``drop=0.5`` and ``drop=1`` (points of test top-1 below the big model alone; the early exits' search, the
little net being "exit 0"). Figures on the whole test split: top-1 of the cascade, expected MACs as a share of
the big model's (the little one's always paid), and, when timed, seconds per sample at batch 1 and 256 of the
big model alone (``backbone``), the real cascade (``real``: the big model runs only on the samples handed on)
and its oracle bound (``oracle``: the little net's time plus the share handed on times the big model's time,
both measured), timed in interleaved rounds by the app's own measurement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import SPEED_RUNS, load_splits

RULE = "max_prob"
TARGETS = ("drop=0.5", "drop=1")


def cascade_rows(little: Tuple[str, Path], big: Tuple[str, Path], data: Optional[str], timing: bool
                 ) -> List[Tuple[str, Dict[str, Any]]]:
    """The rows ``cascade <little> -> <big>, max_prob, drop=...`` for each target, ``little``/``big`` being
    (architecture, checkpoint)."""
    from distill_ee.apputils.datasets import make_loaders

    splits = load_splits(data)
    _, valid, test = make_loaders(splits, 256)
    cascade = build_cascade(little, big, splits.info)
    valid_logits, valid_y = cascade.simulate_loader(valid)
    test_logits, test_y = cascade.simulate_loader(test)
    inputs = torch.cat([x for x, _ in test])
    rows = []
    for target in TARGETS:
        figures = calibrated_figures(cascade, valid_logits, valid_y, test_logits, test_y, target)
        if timing:
            figures["speed"] = cascade_speed(cascade, inputs)
        rows.append((f"cascade {little[0]} -> {big[0]}, {RULE}, {target}", figures))
    return rows


def build_cascade(little: Tuple[str, Path], big: Tuple[str, Path], info: Any) -> Any:
    """The two members from their checkpoints (with their MACs per sample), the little one's rule not yet
    calibrated."""
    from distill_ee.apputils.cascade_cli import load_member
    from distill_ee.cascade import Cascade, cascade_rules
    from distill_ee.summaries import total_macs

    members = [load_member({"name": arch, "arch": arch, "checkpoint": str(path)}, info) for arch, path in (little, big)]
    example = torch.zeros(1, *info.input_shape)
    for member in members:
        if member.has_exits:
            raise ValueError(f"{member.name}: a member with early exits of its own is not what this row measures")
        member.macs = float(total_macs(member.model, example)[0])
    return Cascade(members, [cascade_rules()[RULE]()], [None])


def calibrated_figures(cascade: Any, valid_logits: List[torch.Tensor], valid_y: torch.Tensor,
                       test_logits: List[torch.Tensor], test_y: torch.Tensor, target: str) -> Dict[str, Any]:
    """Calibrate the little net's threshold for ``target`` on validation (set on ``cascade``); the test figures."""
    from distill_ee.apputils.calibration import parse_target
    from distill_ee.early_exit.calibrate import calibrate
    from distill_ee.early_exit.tradeoff import measure_point

    costs = cascade.costs()
    result = calibrate(valid_logits, valid_y, cascade.criteria, costs.macs_per_exit, costs.full_macs,
                       parse_target(target))
    cascade.thresholds = list(result.thresholds)
    point = measure_point(test_logits, test_y, cascade.criteria, cascade.thresholds, costs)
    alone = [100.0 * float((z.argmax(1) == test_y).double().mean()) for z in test_logits]
    return {"top1": point.top1, "macs_pct": 100.0 * point.macs_fraction, "test_images": int(test_y.numel()),
            "little_pct": point.taken_pct[0], "threshold": cascade.thresholds[0], "final_top1": alone[-1],
            "little_top1": alone[0], "member_macs": [m.macs for m in cascade.members],
            "valid": {"top1": result.chosen.top1, "big_top1": result.final_top1,
                      "macs_pct": 100.0 * result.chosen.macs_fraction},
            "note": f"{point.taken_pct[0]:.1f}% answered by {cascade.names[0]}"}


def cascade_speed(cascade: Any, inputs: torch.Tensor) -> Dict[str, Dict[str, Any]]:
    """``{"1": ..., "256": ...}``: seconds per sample of the big model alone, the real cascade and its oracle bound
    (the app's measurement, which also checks real = simulated)."""
    from distill_ee.cascade import measure_cascade_speed

    out = {}
    for batch, n, _ in SPEED_RUNS:  # the cascade's measurement runs its own rounds
        s = measure_cascade_speed(cascade, inputs[:n], batch)
        out[str(batch)] = {"batch_size": batch, "backbone": s["last_alone_seconds_per_sample"],
                           "real": s["seconds_per_sample"], "oracle": s["oracle_seconds_per_sample"],
                           "spread": s["spread"], "real_equals_simulated": s["real_equals_simulated"],
                           "reached_big": s["reached_last"]}
    return out
