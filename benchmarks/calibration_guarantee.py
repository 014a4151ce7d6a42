"""The price of a promise: plain threshold calibration vs. calibration with a statistical guarantee.

    python benchmarks/calibration_guarantee.py [--dataset fashion_mnist] [--epochs 8] [--valid 700] [--test 700]
        [--partitions 100] [--delta 0.1] [--train-images 10000]

One lenet_mnist with the two exits of ``schedules/lenet_mnist.earlyexit.yaml`` is trained once. The images it
never saw are then cut into partitions, each a validation part (``--valid`` images) and a test part
(``--test``). On each partition, for each target:

* plain: the cheapest thresholds whose top-1 drop on the validation part is at most the target;
* guaranteed: Learn-then-Test (``distill_ee.early_exit.risk``) at confidence 1 - delta, risk consistency.

The table shows how often the drop on the test part exceeded the target, the expected MACs each paid on the
test part, and how often the guarantee fell back to the final exit alone. The guaranteed frequency must stay at
or below delta, up to sampling error; the "95% upper bound" column is the Clopper-Pearson bound of that
frequency, and what it bounds depends on the data:

* ``--dataset fashion_mnist`` (the default): the model trains on ``--train-images`` of the 60,000 training
  images; the other 50,000 and the 10,000 test images are cut into **disjoint** partitions. Given the model,
  the partitions are independent draws, so the bound is a real 95% bound on the probability, over fresh
  validation data, that the certified thresholds exceed the target on a test part of that size. A finite test
  part adds its own noise to the measured drop, which can only raise the frequency: the check is conservative.
* ``--dataset mnist5k``: only 1,400 images are held out, so the partitions are drawn at random from the same
  images and overlap. The bound then covers re-partitions of those 1,400 images with this one model, not the
  guarantee's probability over fresh data; the table says so.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

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


def trained_logits(dataset: str, epochs: int, seed: int, train_images: int) -> Dict[str, Any]:
    """Train lenet + two exits; the logits at every exit of every image it did not train on, the labels and the
    costs."""
    torch.manual_seed(seed)
    total = {"fashion_mnist": 60_000, "mnist5k": None}.get(dataset)
    held_out = 1.0 - train_images / total if total else 0.1
    splits = load_dataset(dataset, valid_size=held_out)
    train, valid, test = make_loaders(splits, 64, seed=seed)
    model = create_model("lenet_mnist", splits.info.num_classes, splits.info.input_shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    text = SCHEDULE.read_text().replace("ending_epoch: 12", f"ending_epoch: {max(epochs, 1)}")
    scheduler = schedule_from_text(model, optimizer, text, example_input=torch.zeros(1, *splits.info.input_shape))
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
    return {"logits": logits, "targets": targets, "criteria": list(exits.criteria), "costs": costs,
            "trained_on": len(splits.train)}


def partitions(n: int, valid: int, test: int, count: int, disjoint: bool, seed: int) -> List[Tuple[Any, Any]]:
    """``count`` (validation, test) index pairs of ``n`` images: disjoint ones cut from one shuffle (as many as
    fit), or each drawn at random from all ``n`` (overlapping)."""
    if disjoint:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        size = valid + test
        count = min(count, n // size)
        return [(order[k * size:k * size + valid], order[k * size + valid:(k + 1) * size]) for k in range(count)]
    out = []
    for p in range(count):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + p))
        out.append((order[:valid], order[valid:valid + test]))
    return out


def one_partition(data: Dict[str, Any], valid: Any, test: Any, seed: int, targets: List[float],
                  delta: float) -> List[Dict[str, Any]]:
    """Plain and guaranteed calibration on one validation part, scored on its test part."""
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
    """Train once, partition, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=100, help="at most this many (disjoint: as many as fit)")
    ap.add_argument("--valid", type=int, default=700, help="validation images per partition")
    ap.add_argument("--test", type=int, default=700, help="test images per partition")
    ap.add_argument("--train-images", type=int, default=10_000, help="Fashion-MNIST images the model trains on")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--targets", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = trained_logits(args.dataset, args.epochs, args.seed, args.train_images)
    n = int(data["targets"].shape[0])
    disjoint = args.dataset != "mnist5k"
    parts = partitions(n, args.valid, args.test, args.partitions, disjoint, args.seed)
    final_top1 = 100.0 * float((data["logits"][-1].argmax(1) == data["targets"]).double().mean())
    rows = [r for p, (valid, test) in enumerate(parts)
            for r in one_partition(data, valid, test, 1000 + p, args.targets, args.delta)]
    kind = ("disjoint partitions: independent draws given the model, the bound is of the guarantee's probability"
            if disjoint else "overlapping partitions of the same images: the bound covers re-partitions of these "
            "images with this model, not fresh data")
    print(f"lenet_mnist + 2 exits on {args.dataset}, trained {args.epochs} epochs on {data['trained_on']:,} images; "
          f"top-1 of the final exit on the {n:,} images it did not see {final_top1:.2f}%; {len(parts)} {kind}; "
          f"{args.valid} validation / {args.test} test images each; delta = {args.delta:g} (risk consistency, "
          f"exact binomial tail)")
    print(tabulate(summarize(rows),
                   headers=["target", "method", "partitions", "test drop > target", "95% upper bound",
                            "mean test drop", "worst test drop", "expected MACs (test)", "fell back to final"],
                   tablefmt="github"))
    print(f"the guaranteed method promises a violation frequency of at most {100 * args.delta:g}%; "
          f"the MACs column is the price of that promise")


if __name__ == "__main__":
    main()
