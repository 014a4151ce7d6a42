"""Real early exit in eager PyTorch and on ONNX Runtime, each against its own backbone, on the embedded test split.

lenet_mnist (the quick start's schedule, 12 epochs) and resnet20_cifar with three exits
(``resnet20_mnist.earlyexit.yaml``, 10 epochs, thresholds calibrated for drop=0.5) are trained here with the
sample app and exported with ``--ee-export onnx`` (or given with ``--runs``). On the 1,000 test images:

* exactness: ONNX Runtime's logits against PyTorch's (largest difference) and the share of samples taking the
  same exit;
* at batch 1 (the first ``--single`` test images one by one) and 256 (every test image): seconds per sample of
  the backbone and of real early exit in each runtime, the speedup over that runtime's own backbone, and its
  ratio to the oracle bound (sum over exits of the share leaving there times the measured time to reach it).
  ONNX Runtime runs on one thread at batch 1 (faster there than two: the work is too small to share) and on as
  many as PyTorch at batch 256.

The candidates run in interleaved rounds and each keeps its best round; ``spread`` is how much slower the
median round was than the best one (a figure measured while the machine was busy says so there).

    python benchmarks/deploy_speed.py [--runs LENET_RUN RESNET_RUN] [--rounds 7] [--single 200]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill_ee  # noqa: E402
from distill_ee.apputils.app import main as app_main  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.apputils.timing import exit_fractions, oracle_bound, run_prefix  # noqa: E402
from distill_ee.deploy import MultiExitSession  # noqa: E402
from distill_ee.timing import interleaved_rounds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "mnist5k", "--seed", "0", "--deterministic", "--no-timing", "--ee-export", "onnx"]
MODELS = {
    "lenet_mnist": ["--arch", "lenet_mnist", "--compress", str(ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"),
                    "--epochs", "12", "--lr", "0.02"],
    "resnet20_cifar": ["--arch", "resnet20_cifar", "--compress",
                       str(ROOT / "schedules" / "resnet20_mnist.earlyexit.yaml"), "--epochs", "10", "--lr", "0.1",
                       "-b", "64", "--ee-calibrate", "drop=0.5"],
}


def train(arch: str, out: Path) -> Path:
    """The run directory of a fresh training of ``arch`` (checkpoint and onnx/ export)."""
    print(f"training {arch} ...", flush=True)
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        status = app_main([*MODELS[arch], *COMMON, "-o", str(out / arch)])
    if status != 0:
        raise SystemExit(f"training {arch} failed:\n{log.getvalue()[-2000:]}")
    (run,) = (out / arch).iterdir()
    return run


def exactness(multi: Any, session: MultiExitSession, x: torch.Tensor) -> Dict[str, float]:
    """Largest logit difference (every exit, every sample) and share of samples taking the same exit."""
    with torch.inference_mode():
        want = multi.simulate(x)
        _, want_index = multi(x)
    got = session.simulate(x.numpy())
    _, got_index = session(x.numpy())
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return {"max_diff": diff, "same_exit": float((got_index == want_index.numpy()).mean())}


def timed(model: torch.nn.Module, multi: Any, session: MultiExitSession, batches: List[torch.Tensor],
          rounds: int) -> Dict[str, Any]:
    """Per-sample seconds of both backbones and both real early exits, with each runtime's oracle bound."""
    arrays = [b.numpy() for b in batches]
    n = sum(b.shape[0] for b in batches)
    candidates: Dict[str, Callable[[], Any]] = {
        "torch_backbone": lambda: [model(b) for b in batches],
        "torch_real": lambda: [multi(b) for b in batches],
        "ort_backbone": lambda: [session.backbone(a) for a in arrays],
        "ort_real": lambda: [session(a) for a in arrays],
    }
    for k in range(multi.num_exits + 1):
        candidates[f"torch_prefix{k}"] = lambda k=k: [run_prefix(multi, b, k) for b in batches]
        candidates[f"ort_prefix{k}"] = lambda k=k: [session.run_prefix(a, k) for a in arrays]
    times = interleaved_rounds(candidates, rounds)
    best = {name: min(t) / n for name, t in times.items()}
    fractions = exit_fractions(multi, batches)
    out: Dict[str, Any] = {"fractions": fractions}
    for rt in ("torch", "ort"):
        prefixes = [best[f"{rt}_prefix{k}"] for k in range(multi.num_exits + 1)]
        out[rt] = {"backbone": best[f"{rt}_backbone"], "real": best[f"{rt}_real"],
                   "oracle": oracle_bound(fractions, prefixes),
                   "spread": max(statistics.median(times[f"{rt}_{c}"]) / min(times[f"{rt}_{c}"]) - 1
                                 for c in ("backbone", "real"))}
    return out


def row(arch: str, batch: int, t: Dict[str, Any]) -> List[Any]:
    """One table row: both runtimes' backbone and real early exit (µs per sample), speedups, oracle ratios."""
    cells: List[Any] = [arch, batch]
    for rt in ("torch", "ort"):
        r = t[rt]
        cells += [f"{1e6 * r['backbone']:.1f}", f"{1e6 * r['real']:.1f}", f"{r['backbone'] / r['real']:.2f}x",
                  f"{r['oracle'] / r['real']:.2f}", f"{100 * r['spread']:.0f}%"]
    cells.append(f"{t['ort']['backbone'] / t['torch']['backbone']:.2f}")
    cells.append(" / ".join(f"{100 * f:.0f}" for f in t["fractions"]))
    return cells


def trained_model(arch: str, run: Path) -> torch.nn.Module:
    """The run's checkpoint in a fresh ``arch`` model (its exits and thinning rebuilt), in eval mode."""
    model = create_model(arch, 10, 1)
    distill_ee.load_checkpoint(model, run / "checkpoint.pth.tar")
    return model.eval()


def parse_args(description: str, argv: Optional[List[str]]) -> argparse.Namespace:
    """The flags both this script and quant_speed.py take: --runs, --rounds, --single."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", nargs=2, metavar=("LENET_RUN", "RESNET_RUN"),
                        help="run directories of the two trainings (with --ee-export onnx); default: train here")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--single", type=int, default=200, help="test images timed one by one at batch 1")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Train (or take) both runs, check exactness, time, print the table."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = torch.get_num_threads()
    _, _, test = make_loaders(load_dataset("mnist5k"), 256)
    images = torch.cat([x for x, _ in test])
    rows, exact = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(r) for r in args.runs] if args.runs else [train(a, Path(tmp)) for a in MODELS]
        for arch, run in zip(MODELS, runs):
            model = trained_model(arch, run)
            multi = distill_ee.EarlyExits.of(model).multi_exit_model().eval()
            session = MultiExitSession(run / "onnx", threads=threads)
            single = MultiExitSession(run / "onnx", threads=1)  # one sample: handing work to a 2nd thread costs more
            e = exactness(multi, session, images)
            exact.append([arch, f"{e['max_diff']:.2e}", f"{100 * e['same_exit']:.1f}%", session.thresholds])
            for batch, inputs, ort_session in ((1, images[:args.single], single), (256, images, session)):
                print(f"timing {arch} at batch {batch} ...", flush=True)
                rows.append(row(arch, batch, timed(model, multi, ort_session, list(torch.split(inputs, batch)),
                                                   args.rounds)))
    print()
    print(f"Exactness on the {images.shape[0]} test images (ONNX Runtime against PyTorch)")
    print(tabulate(exact, headers=["model", "largest logit difference", "same exit", "thresholds"], tablefmt="psql"))
    print()
    print(f"Microseconds per sample (PyTorch {threads} threads; ONNX Runtime {threads} at batch 256, 1 at batch 1; "
          f"speedup against the same runtime's backbone; oracle = bound / real)")
    print(tabulate(rows, headers=["model", "batch", "torch backbone", "torch real", "speedup", "oracle", "spread",
                                  "ORT backbone", "ORT real", "speedup", "oracle", "spread",
                                  "ORT/torch backbone", "taken % per exit"], tablefmt="psql"))


if __name__ == "__main__":
    main()
