"""Rows of an anytime-prediction network (MSDNet, RANet): each classifier alone, MSDNet's budgeted batch rule,
and the project's own search at the same budget.

* ``<method>, anytime: classifier k alone``: every test image stopping at classifier k (the last one is the
  network's output); its MACs are the stages up to it with the branches on the way, as the app's anytime
  table counts them (``anytime_files.anytime_rows`` on ``EarlyExits.evaluate``, the checkpoint's thresholds).
* ``<method>, budgeted batch, budget=0.5``: MSDNet's rule (geometric shares of exits for an average budget of
  half the backbone's MACs), thresholds chosen on the validation split as ``--ee-calibrate budget=0.5`` does.
* ``<method>, exits, <criterion>, macs=0.5``: the most accurate thresholds within the same budget on
  validation, the search the app runs next to the budget rule.

Both calibrated rows are measured on the test split, and timed (real early exit against the backbone, with
the oracle bound) when asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import SPEED_RUNS
from .routing import load_trained

BUDGET = 0.5


def anytime_rows(arch: str, checkpoint: Path, data: Optional[str], timing: bool, method: str, *,
                 dataset: str = "fashion_mnist") -> List[Tuple[str, Dict[str, Any]]]:
    """A row per classifier alone, then the budget rule's and the macs= search's rows (with ``speed`` when
    ``timing``)."""
    import distill_ee
    from distill_ee.apputils.calibration import parse_target
    from distill_ee.apputils.datasets import make_loaders

    model, splits = load_trained(arch, checkpoint, data, dataset)
    exits = distill_ee.EarlyExits.of(model)
    if exits is None:
        raise ValueError(f"{checkpoint}: the model has no exits")
    _, valid, test = make_loaders(splits, 256)
    rows = classifier_rows(model, exits, test, splits.info.input_shape, method)
    inputs = torch.cat([x for x, _ in test]) if timing else None
    criterion = "/".join(dict.fromkeys(exits.criteria))
    for text, label in ((f"budget={BUDGET:g}", "budgeted batch"), (f"macs={BUDGET:g}", f"exits, {criterion}")):
        rows.append((f"{method}, {label}, {text}", calibrated_row(model, exits, valid, test, parse_target(text),
                                                                   inputs)))
    return rows


def classifier_rows(model: nn.Module, exits: Any, test: Any, input_shape: Tuple[int, ...], method: str
                    ) -> List[Tuple[str, Dict[str, Any]]]:
    """Each classifier alone on the test split: its top-1 and MACs (% of the backbone), the app's anytime table."""
    from distill_ee.apputils.anytime_files import anytime_rows as anytime_table
    from distill_ee.dynamic import static_compute
    from distill_ee.summaries import total_macs

    with static_compute(model):  # the backbone's MACs as the app's report counts them
        dense, _ = total_macs(model, torch.zeros(1, *input_shape))
    images = len(test.dataset)
    return [(f"{method}, anytime: classifier {k} alone",
             {"top1": r["top1"], "macs_pct": r["macs_pct"], "macs": r["macs"], "classifier": r["name"],
              "test_images": images, "note": f"{r['name']}: {r['macs'] / 1e6:.2f}M MACs, branches on the way included"})
            for k, r in enumerate(anytime_table(exits.evaluate(test), dense), start=1)]


def calibrated_row(model: nn.Module, exits: Any, valid: Any, test: Any, target: Any,
                   inputs: Optional[torch.Tensor]) -> Dict[str, Any]:
    """Thresholds for ``target`` chosen on validation (set on the exits), the test figures at them and, with
    ``inputs``, their speed."""
    from distill_ee.early_exit.calibrate import calibrate_exits, measure_exits, split_figures

    chosen = calibrate_exits(exits, valid, target)
    point, final = measure_exits(exits, test)
    names = list(exits.output_names)
    figures: Dict[str, Any] = {
        "top1": point.top1, "macs_pct": 100.0 * point.macs_fraction, "final_top1": final,
        "test_images": len(test.dataset), "thresholds": list(chosen.thresholds), "taken_pct": list(point.taken_pct),
        "valid": split_figures(chosen.chosen, chosen.final_top1, names)}
    figures["note"] = (f"chosen on validation (top-1 {chosen.top1:.2f} at {100 * chosen.chosen.macs_fraction:.1f}% "
                       f"MACs); test images per classifier {' / '.join(f'{p:.0f}' for p in point.taken_pct)}%")
    if inputs is not None:
        figures["speed"] = exit_speed(model, exits, inputs)
    return figures


def exit_speed(model: nn.Module, exits: Any, inputs: torch.Tensor) -> Dict[str, Any]:
    """Real early exit at the exits' thresholds against the backbone, with the oracle bound, at batch 256 and
    batch 1 (the contract's ``speed``)."""
    from distill_ee.apputils.timing import compare_speed

    multi = exits.multi_exit_model().eval()
    return {str(batch): compare_speed(model, multi, inputs[:images], batch, repeats=repeats)
            for batch, images, repeats in SPEED_RUNS}
