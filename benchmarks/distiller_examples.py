"""Distiller's classifier example schedules, unchanged: which build, and which train an epoch here.

The schedules are Distiller's own files (``tests/fixtures/distiller_examples``, Apache-2.0, with their license);
its manifest names each one's architecture. For each, the sweep builds the schedule on that architecture as a
run would (``distill-ee check``), then runs the sample app on it for one epoch on tiny data written in the
dataset's real format (CIFAR-10 python pickles, an ImageNet ImageFolder tree): ``--compress FILE`` for a
schedule, ``--evaluate --resume-from CKPT --quantize-eval --qe-config-file FILE`` for a post-training quantization
config, where CKPT is the architecture trained one epoch without a schedule. A
documented absence (``docs/distiller.md``) passes when it is refused with one line, exit status 2, saying that
the feature is not implemented here. The table goes to stdout and, with ``--write``, to
``benchmarks/results/distiller_examples.md``.

    python benchmarks/distiller_examples.py [--only SUBSTRING] [--check-only] [--write]

Each run is one epoch of a few images, so an ImageNet architecture's run takes seconds to a minute on 2 cores;
the whole sweep takes about 8 minutes. Policies that start after epoch 0 are built and scheduled but do not
act in a one-epoch run (the table says how many act in it).
"""
from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill_ee.atomic import atomic_write_text  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "distiller_examples"
RESULT = ROOT / "benchmarks" / "results" / "distiller_examples.md"
NOT_HERE = "not implemented here (see docs/distiller.md)"


@dataclass
class Outcome:
    """One example's result: built, trained (or evaluated), or refused as documented."""

    name: str
    arch: str
    status: str
    seconds: float
    detail: str = ""


def dataset_of(arch: str) -> str:
    """Distiller's rule: the dataset an architecture's name implies."""
    return "cifar10" if "cifar" in arch else "mnist" if "mnist" in arch else "imagenet"


def write_cifar(folder: Path, n: int = 8) -> None:
    """CIFAR-10's python pickles, ``n`` random images per batch file."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(i) % 10 for i in range(n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))


def write_imagenet(folder: Path, classes: int = 2, n_train: int = 6, n_val: int = 2) -> None:
    """An ImageNet ImageFolder tree (train/, val/ sorted into class folders) of small PNG images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            target = folder / part / f"n{c:08d}"
            target.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(target / f"{i}.png")


def is_quantization_config(path: Path) -> bool:
    """A post-training quantization config (Distiller's ``--qe-config-file``), not a training schedule."""
    data = yaml.safe_load(path.read_text()) or {}
    quantizers = data.get("quantizers") or {}
    return any(q.get("class") == "PostTrainLinearQuantizer" for q in quantizers.values()) and "policies" not in data


def app_command(arch: str, data: Path, out: Path) -> List[str]:
    """The sample app's command line on ``arch``, without what the example adds."""
    return [sys.executable, str(ROOT / "compress_classifier.py"), str(data), "--arch", arch, "--dataset",
            dataset_of(arch), "-b", "4", "--seed", "0", "--deterministic", "--no-timing", "-o", str(out), "-n",
            "run", "-p", "1000"]


def trained(arch: str, data: Path, scratch: Path, cache: Dict[str, Path]) -> Path:
    """A checkpoint of ``arch`` trained one epoch without a schedule (what a PTQ config quantizes), made once."""
    if arch not in cache:
        out = scratch / f"trained_{arch}"
        proc = subprocess.run(app_command(arch, data, out) + ["--epochs", "1", "--vs", "0.25"],
                              capture_output=True, text=True, cwd=scratch)
        found = sorted(out.glob("**/checkpoint.pth.tar"))
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"training {arch} to quantize it failed: {last[-160:]}")
        cache[arch] = found[0]
    return cache[arch]


def command(path: Path, arch: str, data: Path, out: Path, checkpoint: Optional[Path]) -> List[str]:
    """The sample app's command line for one example (a PTQ config evaluates ``checkpoint``, quantized)."""
    base = app_command(arch, data, out)
    if checkpoint is not None:
        return base + ["--evaluate", "--resume-from", str(checkpoint), "--quantize-eval", "--qe-config-file",
                       str(path), "--qe-calibration", "1"]
    return base + ["--compress", str(path), "--epochs", "1", "--vs", "0.25"]


def run_one(name: str, entry: Dict[str, str], data: Dict[str, Path], scratch: Path, check_only: bool,
            cache: Dict[str, Path]) -> Outcome:
    """Build, then train or evaluate, one example; a documented absence must be refused saying so."""
    from distill_ee.apputils.check import check
    from distill_ee.errors import DistillEEError

    arch, path, start = entry["arch"], FIXTURES / name, time.perf_counter()
    try:
        plan = check(str(path), arch, dataset_of(arch), None, 1)
    except DistillEEError as err:
        ok = "absent" in entry and NOT_HERE in str(err)
        return Outcome(name, arch, "refused as documented" if ok else "FAILED to build",
                       time.perf_counter() - start, str(err)[-160:])
    if "absent" in entry:
        return Outcome(name, arch, "FAILED: built, though documented absent", time.perf_counter() - start)
    acting = plan.count("| epoch 0") + plan.count("epoch(s): 0..")
    if check_only:
        return Outcome(name, arch, "builds", time.perf_counter() - start, f"{acting} policies act in epoch 0")
    out, folder = scratch / name.replace("/", "__"), data[dataset_of(arch)]
    try:
        checkpoint = trained(arch, folder, scratch, cache) if is_quantization_config(path) else None
    except RuntimeError as err:
        return Outcome(name, arch, "FAILED (training before PTQ)", time.perf_counter() - start, str(err))
    proc = subprocess.run(command(path, arch, folder, out, checkpoint), capture_output=True, text=True,
                          cwd=scratch)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(name, arch, f"FAILED (exit {proc.returncode})", seconds, last[-160:])
    what = "evaluated (quantized)" if is_quantization_config(path) else "trained 1 epoch"
    return Outcome(name, arch, what, seconds, f"{acting} policies act in epoch 0")


def sweep(only: Optional[str], check_only: bool) -> List[Outcome]:
    """Every manifest entry (those whose name contains ``only``), in order."""
    manifest = yaml.safe_load((FIXTURES / "manifest.yaml").read_text())["schedules"]
    outcomes, cache = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        data = {"cifar10": scratch / "cifar10", "imagenet": scratch / "imagenet"}
        write_cifar(data["cifar10"])
        write_imagenet(data["imagenet"])
        for name, entry in manifest.items():
            if only and only not in name:
                continue
            outcome = run_one(name, entry, data, scratch, check_only, cache)
            print(f"{outcome.status:>28}  {outcome.seconds:6.1f} s  {name}", flush=True)
            outcomes.append(outcome)
    return outcomes


def table(outcomes: List[Outcome]) -> str:
    """The Markdown table of the sweep, with its totals."""
    rows = [[o.name, o.arch, o.status, f"{o.seconds:.0f}", o.detail] for o in outcomes]
    good = sum(not o.status.startswith("FAILED") for o in outcomes)
    return (f"{good} of {len(outcomes)} of Distiller's example schedules behave as documented: "
            f"{sum(o.status in ('trained 1 epoch', 'evaluated (quantized)', 'builds') for o in outcomes)} build and "
            f"run, {sum(o.status == 'refused as documented' for o in outcomes)} are refused as documented "
            f"absences.\n\n" + tabulate(rows, headers=["schedule", "arch", "outcome", "s", "detail"],
                                         tablefmt="github"))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the sweep; exit status 1 when an example does not behave as documented."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, metavar="SUBSTRING", help="examples whose path contains this")
    p.add_argument("--check-only", action="store_true", help="build the schedules, run nothing")
    p.add_argument("--write", action="store_true", help=f"write the table to {RESULT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    outcomes = sweep(args.only, args.check_only)
    text = table(outcomes)
    print("\n" + text)
    if args.write:
        header = ("# Distiller's example schedules here\n\nWritten by `python benchmarks/distiller_examples.py "
                  "--write`: each of Distiller's classifier example schedules, unchanged, built on its "
                  "architecture and run one epoch on tiny data in the dataset's real format.\n\n")
        atomic_write_text(RESULT, header + text + "\n")
    return 1 if any(o.status.startswith("FAILED") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
