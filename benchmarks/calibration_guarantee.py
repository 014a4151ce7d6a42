"""The price of a promise: plain threshold calibration vs. calibration with a statistical guarantee.

    python benchmarks/calibration_guarantee.py [--epochs 8] [--partitions 100] [--valid 700] [--delta 0.1]

One lenet_mnist with the two exits of ``schedules/lenet_mnist.earlyexit.yaml`` is trained on the embedded
MNIST digits. Its held-out images (the validation and test splits, 1,400) are then cut at random, many times,
into a validation part (``--valid`` images) and a test part (the rest). On each partition, for each target:

* plain: the cheapest thresholds whose top-1 drop on the validation part is at most the target;
* guaranteed: Learn-then-Test (``distill_ee.early_exit.risk``) at confidence 1 - delta, risk consistency.

The table shows how often the drop on the test part exceeded the target (the guaranteed one must stay at or
below delta, up to sampling error: the last column is the 95% upper bound of that frequency), the expected
MACs each paid on the test part, and how often the guarantee fell back to the final exit alone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.apputils.train import train_one_epoch  # noqa: E402
from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate, exit_costs  # noqa: E402
from distill_ee.early_exit.exits import EarlyExits  # noqa: E402
from distill_ee.early_exit.risk import Guarantee, clopper_pearson_upper  # noqa: E402
from distill_ee.early_exit.stats import collect_exit_logits  # noqa: E402
from distill_ee.early_exit.tradeoff import measure_point  # noqa: E402
from distill_ee.modules import eval_mode  # noqa: E402
from distill_ee.schedule import schedule_from_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit.yaml"


def trained_logits(epochs: int, seed: int) -> Dict[str, Any]:
    """Train lenet + two exits; every held-out image's logits at every exit, the labels and the costs."""
    torch.manual_seed(seed)
    splits = load_dataset("mnist5k", valid_size=0.1)
    train, valid, test = make_loaders(splits, 64, seed=seed)
    model = create_model("lenet_mnist", 10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    text = SCHEDULE.read_text().replace("ending_epoch: 12", f"ending_epoch: {max(epochs, 1)}")
    scheduler = schedule_from_text(model, optimizer, text, example_input=torch.zeros(1, 1, 28, 28))
    for epoch in range(epochs):
        scheduler.on_epoch_begin(epoch, optimizer)
        train_one_epoch(model, train, nn.CrossEntropyLoss(), optimizer, scheduler, epoch, torch.device("cpu"),
                        print_freq=10 ** 6)
        scheduler.on_epoch_end(epoch, optimizer, metrics={})
    exits = EarlyExits.of(model)
    multi = exits.multi_exit_model()
    with eval_mode(multi):
        logits, targets = collect_exit_logits(multi, list(valid) + list(test))
    costs = exit_costs(multi, model)
    return {"logits": logits, "targets": targets, "criteria": list(exits.criteria), "costs": costs}


def one_partition(data: Dict[str, Any], valid_size: int, seed: int, targets: List[float],
                  delta: float) -> List[Dict[str, Any]]:
    """Plain and guaranteed calibration on one random validation part, scored on the rest."""
    n = int(data["targets"].shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid, test = order[:valid_size], order[valid_size:]
    costs = data["costs"]
    rows = []
    for target in targets:
        for method, guarantee in (("plain", None), ("guaranteed", Guarantee(1.0 - delta, "risk", seed=seed))):
            result = calibrate([l[valid] for l in data["logits"]], data["targets"][valid], data["criteria"],
                               costs.macs_per_exit, costs.full_macs, CalibrationTarget("drop", (target,)),
                               branch_macs=costs.branch_macs, guarantee=guarantee)
            test_logits = [l[test] for l in data["logits"]]
            point = measure_point(test_logits, data["targets"][test], data["criteria"], result.thresholds, costs)
            final = measure_point(test_logits, data["targets"][test], data["criteria"],
                                  [None] * len(result.thresholds), costs)
            rows.append({"target": target, "method": method, "test_drop": final.top1 - point.top1,
                         "macs": point.macs_fraction, "valid_drop": result.drop,
                         "fallback": bool(result.certificate and result.certificate.chosen is None)})
    return rows


def summarize(rows: List[Dict[str, Any]]) -> List[List[Any]]:
    """One table row per (target, method)."""
    table = []
    for key in sorted({(r["target"], r["method"]) for r in rows}):
        group = [r for r in rows if (r["target"], r["method"]) == key]
        violations = sum(r["test_drop"] > key[0] + 1e-9 for r in group)
        upper = clopper_pearson_upper(violations, len(group), 0.05)
        drops = [r["test_drop"] for r in group]
        table.append([f"drop={key[0]:g}", key[1], len(group), f"{100 * violations / len(group):.1f}%",
                      f"{100 * upper:.1f}%", f"{statistics.mean(drops):.2f}", f"{max(drops):.2f}",
                      f"{100 * statistics.mean(r['macs'] for r in group):.1f}%",
                      f"{100 * sum(r['fallback'] for r in group) / len(group):.0f}%"])
    return table


def main() -> None:
    """Train once, partition many times, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--valid", type=int, default=700, help="validation images per partition (of 1,400 held out)")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--targets", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = trained_logits(args.epochs, args.seed)
    final_top1 = 100.0 * float((data["logits"][-1].argmax(1) == data["targets"]).double().mean())
    rows = [r for p in range(args.partitions)
            for r in one_partition(data, args.valid, 1000 + p, args.targets, args.delta)]
    print(f"lenet_mnist + 2 exits, {args.epochs} epochs; held-out top-1 of the final exit {final_top1:.2f}%; "
          f"{args.partitions} partitions into {args.valid} validation / {int(data['targets'].shape[0]) - args.valid} "
          f"test images; delta = {args.delta:g} (risk consistency, exact binomial tail)")
    print(tabulate(summarize(rows),
                   headers=["target", "method", "partitions", "test drop > target", "95% upper bound",
                            "mean test drop", "worst test drop", "expected MACs (test)", "fell back to final"],
                   tablefmt="github"))
    print(f"the guaranteed method promises a violation frequency of at most {100 * args.delta:g}%; "
          f"the MACs column is the price of that promise")


if __name__ == "__main__":
    main()
