"""Routing (SkipNet gates, BlockDrop) against the plain backbone: accuracy, blocks run, MACs, measured speed.

ResNet-20 on the embedded mnist5k, trained here by the sample app (or loaded from ``--checkpoints``):

* the plain backbone, 14 epochs with a cosine learning rate (the SkipNet schedule's length and rate);
* SkipNet (``schedules/resnet20_mnist.skipnet.yaml``) at its alpha 0.5 and at a second alpha (default 0.2);
* BlockDrop (``schedules/resnet20_mnist.blockdrop.yaml``).

Columns: test top-1, share of the routed blocks executed, their share of MACs executed, expected MACs per sample
(share of the backbone's, decisions included), and for batch 256 and 1 the wall-clock speedup of real routing
over the same network with every block running, with the ratio of the oracle bound to the real time (the oracle:
backbone time minus the routed blocks' time plus each block's time times its execution rate, plus the time of the
decisions). For BlockDrop, "by strategy" times both ways to skip at batch N: ``patterns`` (the default: samples
grouped by pattern, each group run with its dropped blocks not called) and ``rows`` (each block's kept rows
selected and copied back). Backbone and routing run in interleaved rounds; each
keeps its best round; ``spread`` is how much slower than its best the median round was (a busy machine shows
there).

    python benchmarks/routing_speed.py [--checkpoints base.pth skip.pth skip2.pth drop.pth] [--alpha2 0.2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.apputils.app import main as app_main  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.checkpoint import load_checkpoint  # noqa: E402
from distill_ee.routing import Routing  # noqa: E402
from distill_ee.routing.stats import measure_routing_speed, routing_statistics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--arch", "resnet20_cifar", "--dataset", "mnist5k", "--lr", "0.1", "-b", "64", "--seed", "0",
          "--deterministic", "--no-timing"]
COSINE = """version: 1
lr_schedulers:
  training_lr: {class: CosineAnnealingLR, T_max: 14}
policies:
  - lr_scheduler: {instance_name: training_lr}
    starting_epoch: 0
    ending_epoch: 1000
"""


def schedules(out: Path, alpha2: float) -> Dict[str, tuple]:
    """Name -> (schedule file, epochs) of the four models."""
    base = out / "cosine14.yaml"
    base.write_text(COSINE)
    skip = ROOT / "schedules" / "resnet20_mnist.skipnet.yaml"
    skip2 = out / f"skipnet_alpha{alpha2}.yaml"
    skip2.write_text(skip.read_text().replace("alpha: 0.5", f"alpha: {alpha2}"))
    return {"backbone": (base, 14), "skipnet a=0.5": (skip, 14), f"skipnet a={alpha2}": (skip2, 14),
            "blockdrop": (ROOT / "schedules" / "resnet20_mnist.blockdrop.yaml", 22)}


def train(name: str, schedule: Path, epochs: int, out: Path) -> Path:
    """The checkpoint of one sample-app run."""
    print(f"training {name} ({schedule.name}, {epochs} epochs) ...", flush=True)
    log = io.StringIO()
    tag = name.replace(" ", "_").replace("=", "")
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        status = app_main([*COMMON, "--compress", str(schedule), "--epochs", str(epochs), "-o", str(out),
                           "-n", tag])
    if status != 0:
        raise SystemExit(f"training {name} failed:\n{log.getvalue()[-2000:]}")
    return next(out.glob(f"{tag}___*")) / "checkpoint.pth.tar"


def row(name: str, checkpoint: Path, test_loader: Any, inputs: torch.Tensor, repeats: int) -> List[Any]:
    """The table row of one trained model."""
    model = create_model("resnet20_cifar", num_classes=10, in_channels=1)
    load_checkpoint(model, checkpoint)
    model.eval()
    if Routing.of(model) is None:
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test_loader)
        return [name, f"{100.0 * correct / inputs.shape[0]:.2f}", "100.0", "100.0", "100.0", "1.00 (-)", "-",
                "1.00 (-)", "-"]
    stats = routing_statistics(model, test_loader)
    cells = [name, f"{stats['top1']:.2f}", f"{stats['executed_blocks_pct']:.1f}",
             f"{stats['block_macs_executed_pct']:.1f}", f"{stats['macs_pct']:.1f}"]
    spreads = []
    for bs, data in ((256, inputs), (1, inputs[:300])):
        r = measure_routing_speed(model, data, bs, repeats=repeats)
        cells.append(f"{r['speedup']:.2f}x ({r['real_vs_oracle']:.2f})")
        if bs == 256:
            cells.append(" / ".join(f"{k} {r['backbone'] / v:.2f}x" for k, v in r["strategies"].items())
                         if "strategies" in r else "-")
        spreads.append(r["spread"])
    cells.append(f"{100 * max(spreads):.0f}%")
    return cells


def main(argv: Optional[List[str]] = None) -> int:
    """Train (or load) the four models and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs=4, metavar=("BASE", "SKIP", "SKIP2", "DROP"),
                        help="checkpoints of the four runs instead of training them here")
    parser.add_argument("--alpha2", type=float, default=0.2, help="SkipNet's second alpha")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds per candidate")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plan = schedules(out, args.alpha2)
        if args.checkpoints:
            checkpoints = dict(zip(plan, (Path(c) for c in args.checkpoints)))
        else:
            checkpoints = {name: train(name, path, epochs, out) for name, (path, epochs) in plan.items()}
        splits = load_dataset("mnist5k", None, valid_size=0.1)
        test_loader = make_loaders(splits, 256, 0, seed=0, deterministic=True)[2]
        inputs = torch.cat([x for x, _ in test_loader])
        with torch.no_grad():
            rows = [row(name, ckpt, test_loader, inputs, args.repeats) for name, ckpt in checkpoints.items()]
    print(f"\nResNet-20 on mnist5k, {inputs.shape[0]} test samples, {torch.get_num_threads()} threads; speedup "
          "over the same network with every block running (real / oracle bound in brackets)")
    print(tabulate(rows, headers=["model", "test top-1", "blocks run %", "block MACs run %", "MACs % of backbone",
                                  "batch 256", "256 by strategy", "batch 1", "spread"], tablefmt="psql"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
