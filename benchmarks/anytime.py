"""Anytime prediction, budgeted batch classification and IMTA's training techniques, on the embedded mnist5k.

Everything is trained here with the sample app, from the ready schedules and with their header's flags
(``--seed 0 --deterministic``; about 8 minutes on 2 cores), then measured on the same splits:

1. the anytime table (every test sample stopping at one classifier: its top-1 and MACs) of MSDNet
   (``schedules/msdnet_mnist.yaml``) and of ResNet-20 with three branches (``resnet20_mnist.earlyexit.yaml``);
2. budgeted batch classification on the MSDNet at three budgets: MSDNet's rule (geometric shares of exits,
   thresholds set on the validation split, ``--ee-calibrate budget=``) against the project's own search for the
   most accurate thresholds within the budget (``macs=``), both chosen on validation and measured on test;
3. an ablation of IMTA's three techniques (Li et al., 2019) on the MSDNet: none, gradient equilibrium alone,
   forward knowledge transfer alone, one-for-all distillation alone, all three.

    python benchmarks/anytime.py [--epochs 15] [--budgets 0.4 0.55 0.7]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill_ee  # noqa: E402
from distill_ee.apputils.app import main as app_main  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate_exits, measure_exits  # noqa: E402
from distill_ee.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MSDNET = ROOT / "schedules" / "msdnet_mnist.yaml"
RESNET = ROOT / "schedules" / "resnet20_mnist.earlyexit.yaml"
COMMON = ["--dataset", "mnist5k", "--lr", "0.1", "-b", "64", "--seed", "0", "--deterministic", "--no-timing",
          "--ee-calibrate", "budget=0.5"]
#: the IMTA options of the ablation, as EarlyExit instance settings
IMTA = {
    "none": {},
    "gradient equilibrium": {"gradient_equilibrium": True},
    "forward transfer": {"forward_transfer": True},
    "one-for-all distillation": {"distillation": {"temperature": 4.0, "weight": 0.5, "teacher": "final"}},
    "all three": {"gradient_equilibrium": True, "forward_transfer": True,
                  "distillation": {"temperature": 4.0, "weight": 0.5, "teacher": "final"}},
}


def train(arch: str, schedule: Path, epochs: int, out: Path, name: str) -> Path:
    """Run the sample app; the run directory (summary.json, checkpoint)."""
    print(f"training {name} ({epochs} epochs) ...", flush=True)
    log = io.StringIO()
    target = out / name
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        status = app_main(["--arch", arch, "--compress", str(schedule), "--epochs", str(epochs), *COMMON,
                           "-o", str(target)])
    if status != 0:
        raise SystemExit(f"training {name} failed:\n{log.getvalue()[-2000:]}")
    (run,) = target.iterdir()
    return run


def variant(schedule: Path, settings: Dict[str, Any], epochs: int, out: Path, name: str) -> Path:
    """``schedule`` with its early-exit instance given ``settings`` and its cosine period set to ``epochs``."""
    doc = yaml.safe_load(schedule.read_text())
    (instance,) = doc["early_exits"].values()
    instance.update(settings)
    for lr in doc.get("lr_schedulers", {}).values():
        if "T_max" in lr:
            lr["T_max"] = epochs
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def anytime_table(title: str, summary: Dict[str, Any]) -> str:
    """Per classifier: MACs (absolute, share of the backbone) and test top-1."""
    rows = [[r["name"], f"{r['macs'] / 1e6:.2f}M", f"{r['macs_pct']:.1f}%", f"{r['top1']:.1f}"]
            for r in summary["anytime"]]
    return f"{title} (backbone {summary['macs_dense'] / 1e6:.2f}M MACs)\n" + tabulate(
        rows, headers=["classifier", "MACs", "of backbone", "test top1"], tablefmt="psql")


def budget_rows(run: Path, arch: str, budgets: Sequence[float]) -> List[List[Any]]:
    """MSDNet's rule against the macs= search at each budget (chosen on validation, measured on test)."""
    model = create_model(arch, 10, 1)
    distill_ee.load_checkpoint(model, run / "checkpoint.pth.tar")
    model.eval()
    exits = distill_ee.EarlyExits.of(model)
    _, valid, test = make_loaders(load_dataset("mnist5k"), 256)
    rows = []
    for budget in budgets:
        for kind, rule in (("budget", "MSDNet's geometric rule"), ("macs", "macs= search")):
            try:
                calibrate_exits(exits, valid, CalibrationTarget(kind, (budget,)))
            except ConfigError as err:
                rows.append([f"{budget:g}", rule, "-", "-", "-", str(err)[:60]])
                continue
            v, _ = measure_exits(exits, valid)
            t, _ = measure_exits(exits, test)
            rows.append([f"{budget:g}", rule, f"{v.top1:.2f}", f"{t.top1:.2f}", f"{100 * t.macs_fraction:.1f}%",
                         "/".join(f"{p:.0f}" for p in t.taken_pct)])
    return rows


def ablation_row(name: str, summary: Dict[str, Any]) -> List[Any]:
    """Per classifier top-1, their mean, and the budget=0.5 result (test)."""
    top1 = [r["top1"] for r in summary["anytime"]]
    cal = summary["calibration"]
    search = cal.get("same_budget_macs_search", {}).get("test")
    return [name, " / ".join(f"{t:.1f}" for t in top1), f"{sum(top1[:-1]) / (len(top1) - 1):.2f}",
            f"{cal['test']['top1']:.2f} @ {100 * cal['test']['macs_fraction']:.1f}%",
            "-" if search is None else f"{search['top1']:.2f} @ {100 * search['macs_fraction']:.1f}%"]


def main(argv: Optional[List[str]] = None) -> None:
    """Train, measure and print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="MSDNet's epochs (its schedule's header: 15)")
    parser.add_argument("--resnet-epochs", type=int, default=10, help="ResNet-20's epochs (its header: 10)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.55, 0.7])
    parser.add_argument("--skip-ablation", action="store_true", help="only the anytime and budget tables")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        runs: Dict[str, Path] = {}
        runs["none"] = train("msdnet_mnist", variant(MSDNET, {}, args.epochs, out, "msdnet"), args.epochs, out,
                             "msdnet")
        resnet = train("resnet20_cifar", RESNET, args.resnet_epochs, out, "resnet20")
        summaries = {k: json.loads((r / "summary.json").read_text()) for k, r in runs.items()}
        resnet_summary = json.loads((resnet / "summary.json").read_text())
        print()
        print(anytime_table(f"MSDNet (msdnet_mnist, {args.epochs} epochs)", summaries["none"]))
        print(anytime_table(f"ResNet-20 with three branches (resnet20_cifar, {args.resnet_epochs} epochs)",
                            resnet_summary))
        print()
        print("Budgeted batch classification on the MSDNet (thresholds chosen on validation, 400 images; "
              "test, 1000 images)")
        print(tabulate(budget_rows(runs["none"], "msdnet_mnist", args.budgets),
                       headers=["budget", "rule", "valid top1", "test top1", "test MACs", "test taken % per exit"],
                       tablefmt="psql"), flush=True)
        if args.skip_ablation:
            return
        for name, settings in IMTA.items():
            if name not in runs:
                slug = name.replace(" ", "_")
                runs[name] = train("msdnet_mnist", variant(MSDNET, settings, args.epochs, out, slug), args.epochs,
                                   out, slug)
                summaries[name] = json.loads((runs[name] / "summary.json").read_text())
        print()
        print(f"IMTA's techniques on the MSDNet, one at a time ({args.epochs} epochs each, same seed)")
        print(tabulate([ablation_row(n, summaries[n]) for n in IMTA],
                       headers=["options", "test top1 per classifier (final last)", "mean of the early ones",
                                "budget=0.5", "macs=0.5 search"], tablefmt="psql"))


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
