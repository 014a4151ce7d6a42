"""Learned exit decisions against the calibrated entropy rule, on one trained backbone and the same splits.

ResNet-20 with three exits on the embedded mnist5k (``schedules/resnet20_mnist.earlyexit.yaml``, trained here
first unless ``--checkpoint`` gives its checkpoint). With backbone and branches frozen, on the same logits:

* entropy thresholds calibrated on the validation split for a 0.5-point drop (the project's rule);
* differentiable gates (Scardapane et al., 2020) for several lambda: each exit's gate trained with the
  soft-conditional loss plus lambda times the expected cost, hard gates at 0.5 at inference. Here the gates are
  trained after the network, on the training split, with everything else frozen (the ready schedules train
  them jointly); the schedule's gate head;
* the learned policy (Bolukbasi et al., 2017) for several trade-offs, trained on the validation split.

Columns: test top-1, share of test samples per exit, expected MACs (share of the backbone), the MACs the entropy
rule needs for the same test top-1 (interpolated on its Pareto front over the *test* logits: a bound the
entropy rule could only reach with hindsight, so the comparison favours it), and the wall-clock speedup of real
early exit over the backbone at batch 1 and 256 with its ratio to the oracle bound. The timing candidates run
in interleaved rounds; each keeps its best round.

    python benchmarks/learned_exits.py [--checkpoint CKPT] [--lambdas 0.3 1 2] [--tradeoffs 0.05 0.1 0.2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill_ee  # noqa: E402
from distill_ee.apputils.app import main as app_main  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.apputils.timing import compare_speed  # noqa: E402
from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate, exit_costs  # noqa: E402
from distill_ee.early_exit.criteria import criteria_list  # noqa: E402
from distill_ee.early_exit.deciders import (GateCriterion, LearnedPolicyCriterion, build_decider,  # noqa: E402
                                            default_head)
from distill_ee.early_exit.gates import soft_conditional_loss  # noqa: E402
from distill_ee.early_exit.learned_policy import fit_deciders  # noqa: E402
from distill_ee.early_exit.multi_exit import MultiExitModel  # noqa: E402
from distill_ee.early_exit.stats import collect_exit_logits  # noqa: E402
from distill_ee.early_exit.tradeoff import TradeoffPoint, measure_point, pareto_front  # noqa: E402
from distill_ee.modules import eval_mode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / "schedules" / "resnet20_mnist.earlyexit.yaml"
TRAIN = ["--arch", "resnet20_cifar", "--dataset", "mnist5k", "--compress", str(SCHEDULE), "--epochs", "10",
         "--lr", "0.1", "-b", "64", "--seed", "0", "--deterministic", "--no-timing", "-n", "r20"]
GATE_STEPS = 400


def trained_checkpoint(given: Optional[str], out: Path) -> Path:
    """The backbone's checkpoint: ``given``, or a fresh run of the ready schedule."""
    if given:
        return Path(given)
    print("training the backbone (resnet20_mnist.earlyexit.yaml, about a minute) ...", flush=True)
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        status = app_main([*TRAIN, "-o", str(out)])
    if status != 0:
        raise SystemExit(f"training the backbone failed:\n{log.getvalue()[-2000:]}")
    (run,) = out.iterdir()
    return run / "checkpoint.pth.tar"


def train_gates(logits: Sequence[torch.Tensor], targets: torch.Tensor, fractions: Sequence[float], lam: float,
                num_classes: int) -> List[torch.nn.Module]:
    """Gates trained with the soft-conditional loss + lambda * cost on frozen logits (full batch, Adam)."""
    torch.manual_seed(0)
    head = default_head()
    gates = [build_decider(head, num_classes, exit_name=f"exit{k + 1}", path="gate.head")
             for k in range(len(logits) - 1)]
    optimizer = torch.optim.Adam([p for g in gates for p in g.parameters()], lr=0.05)
    for _ in range(GATE_STEPS):
        ce, cost = soft_conditional_loss(logits, [g(l) for g, l in zip(gates, logits)], fractions, targets)
        optimizer.zero_grad()
        (ce + lam * cost).backward()
        optimizer.step()
    return [g.eval() for g in gates]


def entropy_macs_at(front: Sequence[TradeoffPoint], top1: float) -> Optional[float]:
    """The cheapest MACs share at which the entropy front reaches ``top1`` (None if it never does)."""
    reach = [p.macs_fraction for p in front if p.top1 >= top1 - 1e-9]
    return min(reach) if reach else None


def speed(model: torch.nn.Module, multi: MultiExitModel, inputs: torch.Tensor) -> Dict[int, Dict[str, Any]]:
    """compare_speed at batch 256 and batch 1 (fewer samples at batch 1)."""
    return {256: compare_speed(model, multi, inputs, 256, repeats=5),
            1: compare_speed(model, multi, inputs[:200], 1, repeats=3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint of the ready schedule (default: train it, ~1 min)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 1.0, 2.0])
    parser.add_argument("--tradeoffs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--gate-split", choices=["train", "valid"], default="train",
                        help="the split the gates are trained on (default: train, as joint training does)")
    parser.add_argument("--no-timing", action="store_true", help="skip the wall-clock columns")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = trained_checkpoint(args.checkpoint, Path(tmp))
        model = create_model("resnet20_cifar", 10, 1)
        distill_ee.load_checkpoint(model, checkpoint)
    model.eval()
    exits = distill_ee.EarlyExits.of(model)
    splits = load_dataset("mnist5k")
    train, valid, test = make_loaders(splits, 256)
    multi = exits.multi_exit_model().eval()
    with eval_mode(multi):
        train_l, train_y = collect_exit_logits(multi, train)
        valid_l, valid_y = collect_exit_logits(multi, valid)
        test_l, test_y = collect_exit_logits(multi, test)
    costs = exit_costs(multi, model)
    fractions = [m / costs.full_macs for m in costs.macs_per_exit]
    k = exits.exit_set.num_classes
    rows: List[Dict[str, Any]] = []

    entropy = criteria_list("entropy", len(exits.exit_names))
    chosen = calibrate(valid_l, valid_y, entropy, costs.macs_per_exit, costs.full_macs,
                       CalibrationTarget("drop", (0.5,)), branch_macs=costs.branch_macs)
    rows.append({"rule": "entropy, calibrated (drop=0.5 on valid)", "criteria": entropy,
                 "thresholds": chosen.thresholds})
    gate_l, gate_y = (train_l, train_y) if args.gate_split == "train" else (valid_l, valid_y)
    for lam in args.lambdas:
        gates = train_gates(gate_l, gate_y, fractions, lam, k)
        rows.append({"rule": f"gates ({args.gate_split}), lambda={lam:g}",
                     "criteria": [GateCriterion(g) for g in gates], "thresholds": [0.5] * len(gates)})
    for tradeoff in args.tradeoffs:
        torch.manual_seed(0)
        head = default_head()
        deciders = [build_decider(head, k, exit_name=n, path="head") for n in exits.exit_names]
        fit_deciders(deciders, valid_l, valid_y, fractions, tradeoff)
        rows.append({"rule": f"learned policy, trade-off={tradeoff:g}",
                     "criteria": [LearnedPolicyCriterion(d.eval()) for d in deciders],
                     "thresholds": [0.5] * len(deciders)})

    front = pareto_front(test_l, test_y, entropy, costs.macs_per_exit, costs.full_macs,
                         branch_macs=costs.branch_macs)
    inputs = torch.cat([x for x, _ in test])
    table = []
    for row in rows:
        with torch.no_grad():
            point = measure_point(test_l, test_y, row["criteria"], row["thresholds"], costs)
        bound = entropy_macs_at(front, point.top1)
        line = [row["rule"], f"{point.top1:.2f}", "/".join(f"{v:.0f}" for v in point.taken_pct),
                f"{100 * point.macs_fraction:.1f}%", "-" if bound is None else f"{100 * bound:.1f}%"]
        if not args.no_timing:
            timed = MultiExitModel.from_model(model, exits.exit_set, criterion=row["criteria"],
                                              thresholds=row["thresholds"]).eval()
            s = speed(model, timed, inputs)
            line += [f"{s[1]['backbone'] / s[1]['real']:.2f}x", f"{s[256]['backbone'] / s[256]['real']:.2f}x",
                     f"{s[256]['oracle'] / s[256]['real']:.2f}", f"{max(s[1]['spread'], s[256]['spread']):.2f}"]
        table.append(line)
    final_top1 = 100.0 * float((test_l[-1].argmax(1) == test_y).double().mean())
    print(f"resnet20_cifar + 3 exits on mnist5k: test top-1 of the final exit alone {final_top1:.2f}%; "
          f"exits at {', '.join(f'{100 * f:.0f}%' for f in fractions[:-1])} of the backbone's MACs")
    print(tabulate(table, headers=["decision rule", "test top1", "taken % (exits/final)", "expected MACs",
                                   "entropy MACs at same top1", "speedup b1", "speedup b256",
                                   "real/oracle b256", "spread"]))


if __name__ == "__main__":
    main()
