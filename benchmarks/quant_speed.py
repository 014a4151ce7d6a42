"""int8 against fp32 on ONNX Runtime, with and without real early exit, on the embedded mnist5k.

lenet_mnist (the quick start: exit + AGP) and resnet20_cifar with three exits (``resnet20_mnist.earlyexit.yaml``)
are trained here with the sample app and exported with ``--ee-export onnx`` (or given with ``--runs``). Each
export is quantized after training (``distill_ee.deploy.quantize``: ONNX Runtime's static QDQ int8, weights per
channel, activations calibrated on 256 validation images) and its exit thresholds are recalibrated on the
validation split for the int8 model (the target the fp32 run used: drop=0.5). On the 1,000 test images:

* top-1 of the backbone and of early exit, fp32 and int8, and the share of samples per exit;
* the backbone's file size and its weights' bytes, fp32 and int8;
* seconds per sample at batch 1 (one thread) and 256 (as many threads as PyTorch): backbone and real early exit
  in fp32 and int8, int8's speedup over fp32, and int8 early exit's ratio to its oracle bound.

Timing candidates run in interleaved rounds and keep their best round; ``spread`` is how much slower the median
round was (a busy machine shows there).

    python benchmarks/quant_speed.py [--runs LENET_RUN RESNET_RUN] [--rounds 7] [--single 200]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_speed import MODELS, parse_args, train, trained_model  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.timing import oracle_bound  # noqa: E402
from distill_ee.deploy import MultiExitSession  # noqa: E402
from distill_ee.deploy.quantize import quantize_export  # noqa: E402
from distill_ee.apputils.calibration import recalibrate_session  # noqa: E402
from distill_ee.early_exit.calibrate import CalibrationTarget  # noqa: E402
from distill_ee.timing import interleaved_rounds  # noqa: E402

TARGET = CalibrationTarget("drop", (0.5,))


def weight_bytes(path: Path) -> int:
    """Bytes of a model file's initializers (its weights)."""
    import onnx

    return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)


def accuracy(session: MultiExitSession, images: np.ndarray, targets: np.ndarray) -> Dict[str, Any]:
    """Backbone and early-exit top-1, and the share of samples per exit."""
    logits, index = session(images)
    return {"backbone": float((session.backbone(images).argmax(1) == targets).mean() * 100),
            "exits": float((logits.argmax(1) == targets).mean() * 100),
            "taken": np.bincount(index, minlength=session.manifest.num_exits + 1) / len(index)}


def timed(fp32: MultiExitSession, int8: MultiExitSession, batches: List[np.ndarray], rounds: int,
          taken: np.ndarray) -> Dict[str, Any]:
    """Per-sample seconds of both backbones and both real early exits; int8 early exit's oracle ratio."""
    n = sum(b.shape[0] for b in batches)
    candidates = {"fp32_backbone": lambda: [fp32.backbone(b) for b in batches],
                  "int8_backbone": lambda: [int8.backbone(b) for b in batches],
                  "fp32_real": lambda: [fp32(b) for b in batches],
                  "int8_real": lambda: [int8(b) for b in batches]}
    for k in range(int8.manifest.num_exits + 1):
        candidates[f"int8_prefix{k}"] = lambda k=k: [int8.run_prefix(b, k) for b in batches]
    times = interleaved_rounds(candidates, rounds)
    best = {name: min(t) / n for name, t in times.items()}
    prefixes = [best[f"int8_prefix{k}"] for k in range(int8.manifest.num_exits + 1)]
    spread = max(statistics.median(t) / min(t) - 1 for name, t in times.items() if "prefix" not in name)
    return {**best, "oracle": oracle_bound(list(taken), prefixes), "spread": spread}


def main(argv: Optional[List[str]] = None) -> None:
    """Train (or take) both runs, quantize, recalibrate, measure, print."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = torch.get_num_threads()
    _, valid, test = make_loaders(load_dataset("mnist5k"), 256)
    valid_images = torch.cat([x for x, _ in valid]).numpy()
    images = torch.cat([x for x, _ in test]).numpy()
    targets = torch.cat([y for _, y in test]).numpy()
    quality, speed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(r) for r in args.runs] if args.runs else [train(a, Path(tmp)) for a in MODELS]
        for arch, run in zip(MODELS, runs):
            model = trained_model(arch, run)
            int8_dir = Path(tmp) / f"{arch}_int8"
            quantize_export(run / "onnx", int8_dir, valid_images[:256])
            sessions = {}
            for batch, n_threads in ((1, 1), (256, threads)):
                fp32, int8 = MultiExitSession(run / "onnx", n_threads), MultiExitSession(int8_dir, n_threads)
                recalibrate_session(int8, model, valid, TARGET.text)
                sessions[batch] = (fp32, int8)
            fp32, int8 = sessions[256]
            a32, a8 = accuracy(fp32, images, targets), accuracy(int8, images, targets)
            fp32_file, int8_file = run / "onnx" / "backbone.onnx", int8_dir / "backbone.onnx"
            quality.append([arch, f"{a32['backbone']:.1f} / {a8['backbone']:.1f}",
                            f"{a32['exits']:.1f} / {a8['exits']:.1f}",
                            " / ".join(f"{100 * t:.0f}" for t in a32["taken"]),
                            " / ".join(f"{100 * t:.0f}" for t in a8["taken"]),
                            f"{fp32_file.stat().st_size / 1e3:.0f} / {int8_file.stat().st_size / 1e3:.0f} kB",
                            f"{weight_bytes(fp32_file) / weight_bytes(int8_file):.2f}x"])
            for batch, inputs in ((1, images[:args.single]), (256, images)):
                print(f"timing {arch} at batch {batch} ...", flush=True)
                fp32, int8 = sessions[batch]
                taken = accuracy(int8, inputs, targets[:inputs.shape[0]])["taken"]
                t = timed(fp32, int8, [inputs[i:i + batch] for i in range(0, inputs.shape[0], batch)], args.rounds,
                          taken)
                speed.append([arch, batch, *(f"{1e6 * t[c]:.1f}" for c in ("fp32_backbone", "int8_backbone")),
                              f"{t['fp32_backbone'] / t['int8_backbone']:.2f}x",
                              *(f"{1e6 * t[c]:.1f}" for c in ("fp32_real", "int8_real")),
                              f"{t['fp32_real'] / t['int8_real']:.2f}x", f"{t['fp32_backbone'] / t['int8_real']:.2f}x",
                              f"{t['oracle'] / t['int8_real']:.2f}", f"{100 * t['spread']:.0f}%"])
    print()
    print("Test split, fp32 / int8 (int8 thresholds recalibrated on validation for drop=0.5)")
    print(tabulate(quality, headers=["model", "backbone top1", "early exit top1", "taken % fp32", "taken % int8",
                                     "backbone file", "weights fp32/int8"], tablefmt="psql"))
    print()
    print(f"Microseconds per sample (ONNX Runtime; 1 thread at batch 1, {threads} at batch 256)")
    print(tabulate(speed, headers=["model", "batch", "fp32 backbone", "int8 backbone", "int8 speedup",
                                   "fp32 early exit", "int8 early exit", "int8 speedup", "int8 EE vs fp32 backbone",
                                   "int8 EE oracle", "spread"], tablefmt="psql"))


if __name__ == "__main__":
    main()
