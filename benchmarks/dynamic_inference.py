"""Every dynamic-inference method side by side on Fashion-MNIST: one table, the same backbones and splits.

Fashion-MNIST (60,000 training images, 5,000 of them held out for validation, 10,000 test images; `--dataset
fashion_mnist`, Debian's `dataset-fashion-mnist` or `--data DIR`). Each training runs
`compress_classifier.py` once and is cached by the hash of its configuration (architecture, schedule text,
flags, dataset, epochs): a second run reuses it, and an interrupted one resumes from its last checkpoint. The
rows computed from a trained model (exit rules calibrated for a target, their timing) are cached the same way,
keyed by the training and the row. Progress is printed as it goes.

Rows in this version:

* the backbones alone: a LeNet-style net (2 conv + pooling) and ResNet-20, with the published references;
* ResNet-20 with three exits trained jointly (`schedules/resnet20_mnist.earlyexit.yaml`), decided by the
  entropy, max-prob, margin and patience rules, each calibrated on the validation split for drop=0.5, drop=1
  and macs=0.5, and the entropy rule calibrated with the Learn-then-Test guarantee (drop=0.5 and drop=1 at
  confidence 0.9: how tight the certificate is, is the bound next to the measured drop).

Columns: test top-1 on the 10,000 test images with its 95% confidence interval (Wilson), expected MACs (% of
the backbone), the wall-clock speedup of real early exit over the backbone at batch 1 and 256 with the oracle
bound (interleaved rounds, best round each, the rounds' spread), and the training's time. Written to
`--out` as `dynamic_inference.csv`, `dynamic_inference.md` and `dynamic_inference.png` (test top-1 against
expected MACs and against measured time per sample at batch 256).

    python benchmarks/dynamic_inference.py [--epochs 15] [--data DIR] [--cache DIR] [--out DIR] [--no-timing]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.atomic import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: bump when a change here makes cached results stale
BENCH_VERSION = 1
VALID_IMAGES = 5_000
TRAIN_IMAGES = 60_000
#: published Fashion-MNIST test top-1 (%) next to the backbones (Zalando's benchmark and papers)
REFERENCES = {"lenet_mnist": "91.6 (2 conv + pooling); 93.4 with batch norm", "resnet20_cifar": "94.9 (ResNet-18)"}
RULES = ("entropy", "max_prob", "margin", "patience")
TARGETS = ("drop=0.5", "drop=1", "macs=0.5")
GUARANTEED = ("drop=0.5", "drop=1")
CONFIDENCE = 0.9
Z95 = 1.959964


# --------------------------------------------------------------------------- trainings, cached by their hash
@dataclass
class Training:
    """One run of compress_classifier.py: what decides its result, and nothing else."""

    name: str
    arch: str
    epochs: int
    schedule: Optional[str] = None  # the schedule's text (its LR period set to ``epochs``)
    flags: Tuple[str, ...] = ()
    dataset: str = "fashion_mnist"
    data: Optional[str] = None
    seed: int = 0

    def key(self) -> str:
        """The hash of every field that decides the trained model (not the name, nor where the data lie)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("name", "data")}
        fields["flags"] = list(self.flags)
        fields["version"] = BENCH_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def command(self, out: Path, schedule_file: Optional[Path], resume: Optional[Path]) -> List[str]:
        """The app's arguments for a run into ``out`` (resumed from ``resume`` when given)."""
        args = [*([self.data] if self.data else []), "--dataset", self.dataset, "--arch", self.arch,
                "--epochs", str(self.epochs), "--vs", repr(VALID_IMAGES / TRAIN_IMAGES), "--seed", str(self.seed),
                "--deterministic", "--no-timing", "-o", str(out), "-n", "train", "-p", "100000", *self.flags]
        if schedule_file is not None:
            args += ["--compress", str(schedule_file)]
        if resume is not None:
            args += ["--resume-from", str(resume)]
        return args


def schedule_text(path: Path, epochs: int) -> str:
    """A ready schedule's text with its cosine LR period set to ``epochs`` (the schedules say ``= --epochs``)."""
    data = yaml.safe_load(path.read_text())
    for scheduler in (data.get("lr_schedulers") or {}).values():
        if "T_max" in scheduler:
            scheduler["T_max"] = epochs
    return yaml.safe_dump(data, sort_keys=False)


def run_app(args: Sequence[str]) -> int:
    """compress_classifier.py in a subprocess (its own threads and memory), output kept for a failure."""
    done = subprocess.run([sys.executable, str(ROOT / "compress_classifier.py"), *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
    return done.returncode


@dataclass
class Trained:
    """A finished training: its checkpoint, its summary and how long it trained."""

    checkpoint: Path
    summary: Dict[str, Any]
    train_seconds: float
    cached: bool = False


def ensure_trained(training: Training, cache: Path, runner: Callable[[Sequence[str]], int] = run_app) -> Trained:
    """The cached training, or a run of it now (resumed from the last checkpoint an interrupted run left)."""
    folder = cache / training.key()
    done = folder / "done.json"
    if done.is_file():
        record = json.loads(done.read_text())
        return Trained(folder / record["checkpoint"], record["summary"], record["train_seconds"], cached=True)
    folder.mkdir(parents=True, exist_ok=True)
    schedule_file = None
    if training.schedule is not None:
        schedule_file = folder / "schedule.yaml"
        atomic_write_text(schedule_file, training.schedule)
    resume = last_checkpoint(folder / "runs")
    if runner(training.command(folder / "runs", schedule_file, resume)) != 0:
        raise SystemExit(f"training {training.name!r} failed (its runs are in {folder / 'runs'})")
    run = latest_run(folder / "runs")
    summary = json.loads((run / "summary.json").read_text())
    record = {"checkpoint": str((run / "checkpoint.pth.tar").relative_to(folder)), "summary": summary,
              "train_seconds": train_seconds(folder / "runs"), "training": asdict(training)}
    atomic_write_json(done, record)
    return Trained(run / "checkpoint.pth.tar", summary, record["train_seconds"])


def latest_run(runs: Path) -> Path:
    """The newest run directory under ``runs``."""
    return max((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns)


def last_checkpoint(runs: Path) -> Optional[Path]:
    """The checkpoint of the furthest epoch any earlier (interrupted) run under ``runs`` saved, or None."""
    if not runs.is_dir():
        return None
    found = [(epochs_done(run), run / "checkpoint.pth.tar") for run in runs.iterdir()
             if (run / "checkpoint.pth.tar").is_file()]
    return max(found)[1] if found else None


def epochs_done(run: Path) -> int:
    """How many epochs a run directory's metrics.csv records."""
    if not (run / "metrics.csv").is_file():
        return 0
    with open(run / "metrics.csv") as f:
        return len(list(csv.DictReader(f)))


def train_seconds(runs: Path) -> float:
    """The training time of every run under ``runs`` together (metrics.csv's ``seconds`` per epoch)."""
    total = 0.0
    for run in runs.iterdir():
        if (run / "metrics.csv").is_file():
            with open(run / "metrics.csv") as f:
                total += sum(float(row.get("seconds") or 0.0) for row in csv.DictReader(f))
    return total


# --------------------------------------------------------------------------- rows computed from a trained model
def cached_row(cache: Path, training: Training, spec: Dict[str, Any], compute: Callable[[], Dict[str, Any]]
               ) -> Dict[str, Any]:
    """The row ``spec`` of ``training``: from the cache, or computed now and cached."""
    key = hashlib.sha256(json.dumps({**spec, "training": training.key(), "version": BENCH_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache / training.key() / "rows" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    row = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, row)
    return row


def wilson(top1: float, n: int) -> Tuple[float, float]:
    """The 95% Wilson interval (percent) of a top-1 of ``top1`` percent on ``n`` images."""
    p = top1 / 100.0
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return 100.0 * (centre - half), 100.0 * (centre + half)


class ExitRows:
    """The exit rules of one model with exits, on logits collected once per split."""

    def __init__(self, trained: Trained, training: Training, timing: bool):
        import torch

        import distill_ee
        from distill_ee.apputils.datasets import load_dataset, make_loaders
        from distill_ee.apputils.models import create_model
        from distill_ee.early_exit.calibrate import exit_costs
        from distill_ee.early_exit.stats import collect_exit_logits
        from distill_ee.modules import eval_mode

        splits = load_dataset(training.dataset, training.data, valid_size=VALID_IMAGES / TRAIN_IMAGES)
        self.model = create_model(training.arch, splits.info.num_classes, splits.info.input_shape[0])
        distill_ee.load_checkpoint(self.model, trained.checkpoint)
        self.model.eval()
        self.exits = distill_ee.EarlyExits.of(self.model)
        _, valid, test = make_loaders(splits, 256)
        multi = self.exits.multi_exit_model().eval()
        with eval_mode(multi), torch.no_grad():
            self.valid = collect_exit_logits(multi, valid)
            self.test = collect_exit_logits(multi, test)
        self.costs = exit_costs(multi, self.model)
        self.inputs = torch.cat([x for x, _ in test])
        self.timing = timing

    def row(self, rule: str, target: str, confidence: Optional[float] = None) -> Dict[str, Any]:
        """Calibrate ``rule`` for ``target`` on validation (certified at ``confidence`` when given); its test
        figures and speed."""
        from distill_ee.apputils.calibration import parse_target
        from distill_ee.early_exit.calibrate import calibrate
        from distill_ee.early_exit.criteria import criteria_list
        from distill_ee.early_exit.risk import Guarantee
        from distill_ee.early_exit.tradeoff import measure_point

        criteria = criteria_list(rule, len(self.exits.exit_names))
        certificate = None
        if rule == "patience":  # its threshold is a count: searched here, as calibration searches confidences
            thresholds = self.patience_choice(criteria, parse_target(target))
        else:
            guarantee = Guarantee(confidence=confidence) if confidence else None
            chosen = calibrate(*self.valid, criteria, self.costs.macs_per_exit, self.costs.full_macs,
                               parse_target(target), branch_macs=self.costs.branch_macs, guarantee=guarantee)
            thresholds, certificate = chosen.thresholds, chosen.certificate
        point = measure_point(*self.test, criteria, thresholds, self.costs)
        final = 100.0 * float((self.test[0][-1].argmax(1) == self.test[1]).double().mean())
        row = {"top1": point.top1, "macs_pct": 100.0 * point.macs_fraction, "taken_pct": point.taken_pct,
               "thresholds": thresholds, "final_top1": final, "test_images": int(self.test[1].numel())}
        if certificate is not None:
            c = certificate
            row["certificate"] = {"target": c.target, "bound": c.bound, "delta": c.delta,
                                  "certified": c.certified, "tested": len(c.tested),
                                  "smallest_target": c.smallest_target}
        if self.timing:
            row["speed"] = self.speed(criteria, thresholds)
        return row

    def patience_choice(self, criteria: Any, target: Any) -> List[Optional[float]]:
        """The patience (one count for every exit, or every exit off) meeting ``target`` on validation: for a
        drop, the cheapest within it of the final exit; for a MACs share, the most accurate within it (else the
        cheapest)."""
        from distill_ee.early_exit.tradeoff import measure_point

        n = len(self.exits.exit_names)
        settings = [[float(k)] * n for k in range(1, n + 1)] + [[None] * n]
        points = [measure_point(*self.valid, criteria, t, self.costs) for t in settings]
        final = points[-1].top1
        if target.kind == "drop":
            fit = [i for i, p in enumerate(points) if p.top1 >= final - target.value]
            return settings[min(fit, key=lambda i: points[i].macs_fraction)]
        fit = [i for i, p in enumerate(points) if p.macs_fraction <= target.value]
        if not fit:
            return settings[min(range(len(points)), key=lambda i: points[i].macs_fraction)]
        return settings[max(fit, key=lambda i: points[i].top1)]

    def speed(self, criteria: Any, thresholds: Sequence[Optional[float]]) -> Dict[str, Any]:
        """Real early exit against the backbone at batch 256 and batch 1, with the oracle bound."""
        from distill_ee.apputils.timing import compare_speed
        from distill_ee.early_exit.multi_exit import MultiExitModel

        timed = MultiExitModel.from_model(self.model, self.exits.exit_set, criterion=criteria,
                                          thresholds=list(thresholds)).eval()
        return {"256": compare_speed(self.model, timed, self.inputs[:2560], 256, repeats=5),
                "1": compare_speed(self.model, timed, self.inputs[:200], 1, repeats=3)}


def backbone_row(trained: Trained) -> Dict[str, Any]:
    """A backbone's test figures from its summary (the test images counted by its per-class rows)."""
    s = trained.summary
    return {"top1": s["top1"], "macs_pct": 100.0, "final_top1": s["top1"],
            "test_images": sum(row["images"] for row in s["classes"])}


# --------------------------------------------------------------------------- the table
@dataclass
class Line:
    """One row of the table."""

    method: str
    backbone: str
    figures: Dict[str, Any]
    train_seconds: float
    reference: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


def cells(line: Line) -> Dict[str, str]:
    """The printed cells of a line."""
    f = line.figures
    low, high = wilson(f["top1"], f["test_images"])
    out = {"method": line.method, "backbone": line.backbone,
           "test top-1 % (95% CI)": f"{f['top1']:.2f} ({low:.2f}-{high:.2f})",
           "expected MACs %": f"{f['macs_pct']:.1f}"}
    speed = f.get("speed")
    for batch in ("1", "256"):
        if speed:
            s = speed[batch]
            out[f"speedup b{batch} (oracle)"] = f"{s['backbone'] / s['real']:.2f}x ({s['backbone'] / s['oracle']:.2f}x)"
        else:
            out[f"speedup b{batch} (oracle)"] = "1.00x" if f["macs_pct"] == 100.0 else "-"
    out["spread"] = f"{max(speed[b]['spread'] for b in speed):.2f}" if speed else "-"
    cert = f.get("certificate")
    out["certified drop bound"] = (f"{100 * cert['bound']:.2f} (target {100 * cert['target']:.2f})"
                                   if cert and cert.get("bound") is not None and cert.get("target") is not None
                                   else "-")
    out["training"] = f"{line.train_seconds / 60:.1f} min"
    out["reference"] = line.reference
    return out


def write_outputs(lines: Sequence[Line], out: Path, header: str) -> str:
    """CSV, Markdown and the Pareto plot; the Markdown text."""
    from tabulate import tabulate

    out.mkdir(parents=True, exist_ok=True)
    rows = [cells(line) for line in lines]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "dynamic_inference.csv", buffer.getvalue())
    markdown = f"{header}\n\n{tabulate(rows, headers='keys', tablefmt='github')}\n"
    atomic_write_text(out / "dynamic_inference.md", markdown)
    plot(lines, out / "dynamic_inference.png")
    return markdown


def plot(lines: Sequence[Line], path: Path) -> None:
    """Test top-1 against expected MACs and against the measured time per sample at batch 256."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    backbones: Dict[str, float] = {}
    for line in lines:
        f = line.figures
        label = line.method if line.figures.get("speed") else f"{line.backbone} alone"
        left.scatter(f["macs_pct"], f["top1"], s=18)
        left.annotate(label, (f["macs_pct"], f["top1"]), fontsize=6)
        if f.get("speed"):
            right.scatter(1e6 * f["speed"]["256"]["real"], f["top1"], s=18)
            right.annotate(label, (1e6 * f["speed"]["256"]["real"], f["top1"]), fontsize=6)
            backbones[line.backbone] = 1e6 * f["speed"]["256"]["backbone"]
    for line in lines:  # a backbone alone, at the time the rows measured beside its exits
        if not line.figures.get("speed") and line.backbone in backbones:
            right.scatter(backbones[line.backbone], line.figures["top1"], marker="*", s=60)
            right.annotate(f"{line.backbone} alone", (backbones[line.backbone], line.figures["top1"]), fontsize=6)
    left.set(xlabel="expected MACs (% of the backbone)", ylabel="test top-1 (%)", title="accuracy against compute")
    right.set(xlabel="µs per sample, batch 256 (real early exit)", ylabel="test top-1 (%)",
              title="accuracy against measured time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the benchmark
def trainings(epochs: int, data: Optional[str]) -> Dict[str, Training]:
    """Every training the table needs."""
    exits = schedule_text(ROOT / "schedules" / "resnet20_mnist.earlyexit.yaml", epochs)
    plain = {"lr_schedulers": {"training_lr": {"class": "CosineAnnealingLR", "T_max": epochs}},
             "policies": [{"lr_scheduler": {"instance_name": "training_lr"}, "starting_epoch": 0,
                           "ending_epoch": 1000, "frequency": 1}], "version": 1}
    cosine = yaml.safe_dump(plain, sort_keys=False)
    common = {"epochs": epochs, "data": data}
    return {
        "lenet": Training("lenet", "lenet_mnist", schedule=cosine, flags=("--lr", "0.05", "-b", "128"), **common),
        "resnet20": Training("resnet20", "resnet20_cifar", schedule=cosine, flags=("--lr", "0.1", "-b", "128"),
                             **common),
        "resnet20_exits": Training("resnet20_exits", "resnet20_cifar", schedule=exits,
                                   flags=("--lr", "0.1", "-b", "128"), **common),
    }


def machine() -> str:
    """Where the figures were measured: the timing runs on the CPU; the trainings use CUDA when present."""
    import os
    import platform

    import torch

    gpu = f"trained on {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (f"Measured with PyTorch {torch.__version__} on {platform.machine()} CPU ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads), {gpu}.")


def progress(step: int, total: int, what: str, started: float) -> None:
    print(f"[{step}/{total}] {what} ({time.perf_counter() - started:.0f} s so far)", flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs of every training (default: 15)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST's directory (default: Debian's location)")
    parser.add_argument("--cache", default=str(ROOT / ".bench_cache" / "dynamic_inference"),
                        help="where trainings and rows are cached (default: .bench_cache/dynamic_inference)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the table is written")
    parser.add_argument("--no-timing", action="store_true", help="skip the wall-clock columns")
    args = parser.parse_args(argv)
    cache, started = Path(args.cache), time.perf_counter()
    plan = trainings(args.epochs, args.data)
    trained: Dict[str, Trained] = {}
    for i, (name, training) in enumerate(plan.items(), start=1):
        progress(i, len(plan), f"training {name} ({training.arch}, {training.epochs} epochs, key {training.key()})",
                 started)
        trained[name] = ensure_trained(training, cache)
        print(f"    {'cached' if trained[name].cached else 'trained'}: test top-1 {trained[name].summary['top1']:.2f}"
              f", {trained[name].train_seconds / 60:.1f} min of training", flush=True)
    lines = [Line("backbone alone", plan[n].arch, backbone_row(trained[n]), trained[n].train_seconds,
                  REFERENCES[plan[n].arch]) for n in ("lenet", "resnet20")]
    specs = [(rule, target, None) for rule in RULES for target in TARGETS]
    specs += [("entropy", target, CONFIDENCE) for target in GUARANTEED]
    rows: Optional[ExitRows] = None
    for j, (rule, target, confidence) in enumerate(specs, start=1):
        method = f"exits, {rule}, {target}" + (f", certified at {confidence:g}" if confidence else "")
        progress(j, len(specs), method, started)
        spec = {"rule": rule, "target": target, "confidence": confidence, "timing": not args.no_timing}

        def compute() -> Dict[str, Any]:
            nonlocal rows
            rows = rows or ExitRows(trained["resnet20_exits"], plan["resnet20_exits"], not args.no_timing)
            return rows.row(rule, target, confidence)

        figures = cached_row(cache, plan["resnet20_exits"], spec, compute)
        lines.append(Line(method, "resnet20_cifar", figures, trained["resnet20_exits"].train_seconds))
    header = (f"Fashion-MNIST, {args.epochs} epochs per training, {lines[-1].figures['test_images']:,} test images; "
              f"the final exit of the model with exits alone: {lines[-1].figures['final_top1']:.2f}%. {machine()}")
    print(write_outputs(lines, Path(args.out), header))


if __name__ == "__main__":
    main()
