"""Every dynamic-inference method side by side on Fashion-MNIST: one table, the same backbones and splits.

Fashion-MNIST (60,000 training images, 5,000 of them held out for validation, 10,000 test images; `--dataset
fashion_mnist`, Debian's `dataset-fashion-mnist` or `--data DIR`). Each training runs
`compress_classifier.py` once and is cached by the hash of its configuration (architecture, schedule text,
flags, dataset, epochs): a second run reuses it, and an interrupted one resumes from its last checkpoint. The
rows computed from a trained model (exit rules calibrated for a target, their timing) are cached the same way,
keyed by the training and the row. Progress is printed as it goes.

Rows (``row_plans``; the families' own modules are in ``benchmarks/dynamic/``):

* the backbones alone: a LeNet-style net (2 conv + pooling) and ResNet-20, with the published references;
* ResNet-20 with three exits trained jointly (``schedules/resnet20_mnist.earlyexit.yaml``), decided by the
  entropy, max-prob, margin and patience rules, each calibrated on the validation split for drop=0.5, drop=1
  and macs=0.5; the entropy rule calibrated with the Learn-then-Test guarantee (confidence 0.9: how tight the
  certificate is, is the bound next to the measured drop); a learned exit policy on the same model;
* differentiable gates trained jointly, and IMTA's options, for the same targets;
* the pipeline (AGP filter pruning + thinning + exits), in PyTorch and on ONNX Runtime in fp32 and int8,
  measured against the dense ResNet-20 in PyTorch fp32;
* SkipNet and BlockDrop (with how per-sample their routing is), MSDNet and RANet (anytime and budgeted batch),
  and a Big/Little cascade of the LeNet and the ResNet-20.

The seed papers' claims are set next to the rows that test them (``benchmarks/dynamic/paper_claims.py``).

Columns: test top-1 on the 10,000 test images with its 95% confidence interval (Wilson), expected MACs (% of
the backbone), the wall-clock speedup of real early exit over the backbone at batch 1 and 256 with the oracle
bound (interleaved rounds, best round each, the rounds' spread), and the training's time. Written to
`--out` as `dynamic_inference.csv`, `dynamic_inference.md` and `dynamic_inference.png` (test top-1 against
expected MACs and against measured time per sample at batch 256).

    python benchmarks/dynamic_inference.py [--epochs 10] [--data DIR] [--cache DIR] [--out DIR] [--no-timing]
        [--available | --train-only] [--only NAME[,NAME]] [--write-docs]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.claims import HEADER_BEGIN, HEADER_END, replace_block, wrap_comment  # noqa: E402
from benchmarks.dynamic import SPEED_RUNS, load_model, load_splits  # noqa: E402
from benchmarks.dynamic.paper_claims import Row as ClaimRow, claims_markdown  # noqa: E402
from benchmarks.dynamic.results import Results  # noqa: E402
from distill_ee.atomic import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: bump when a change here makes cached results stale
BENCH_VERSION = 1
#: --vs holding out exactly 500 images of each class (benchmarks.dynamic.VALID_IMAGES), as the ready schedules' headers write it
VALID_FLAG = "0.08333"
#: published Fashion-MNIST test top-1 (%) next to the backbones (Zalando's benchmark and papers)
REFERENCES = {"lenet_mnist": "91.6 (2 conv + pooling); 93.4 with batch norm", "resnet20_cifar": "94.9 (ResNet-18)"}
RULES = ("entropy", "max_prob", "margin", "patience")
TARGETS = ("drop=0.5", "drop=1", "macs=0.5")
GUARANTEED = ("drop=0.5", "drop=1")
CONFIDENCE = 0.9
#: knowledge distillation of the LeNet from the ResNet-20 (Hinton et al.'s loss, docs/distillation.md's settings)
KD_FLAGS = ("--kd-temperature", "4", "--kd-distill-wt", "0.7", "--kd-student-wt", "0.3")
KD_ROW = "lenet_mnist taught by resnet20_cifar (KD: T=4, weights 0.7/0.3)"
Z95 = 1.959964
#: a training whose epochs summed to more than this share over its median-based time shared the machine
BUSY_SHARE = 0.2
BUSY_MARK = " †"
TIME_NOTE = (f"Training time: the median epoch's wall-clock time × the epochs;{BUSY_MARK.rstrip()} marks a training "
             f"whose epochs summed to over {BUSY_SHARE:.0%} more, because other work shared the machine (the sums "
             "are in the results file).")


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
    teacher: Optional["Training"] = None  # knowledge distillation from this training's model (--kd-teacher)

    def key(self) -> str:
        """The hash of every field that decides the trained model (not the name, nor where the data lie; a
        teacher by its own key)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("name", "data", "teacher")}
        fields["flags"] = list(self.flags)
        fields["version"] = BENCH_VERSION
        if self.teacher is not None:
            fields["teacher"] = self.teacher.key()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def command(self, out: Path, schedule_file: Optional[Path], resume: Optional[Path],
                teacher: Optional[Path] = None) -> List[str]:
        """The app's arguments for a run into ``out`` (resumed from ``resume``, taught by the checkpoint
        ``teacher`` when given)."""
        args = [*([self.data] if self.data else []), "--dataset", self.dataset, "--arch", self.arch,
                "--epochs", str(self.epochs), "--vs", VALID_FLAG, "--seed", str(self.seed),
                "--deterministic", "--no-timing", "-o", str(out), "-n", "train", "-p", "100000", *self.flags]
        if self.teacher is not None:
            if teacher is None:
                raise ValueError(f"training {self.name!r} needs its teacher's checkpoint")
            args += ["--kd-teacher", self.teacher.arch, "--kd-resume", str(teacher)]
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


def header_epochs(path: Path) -> int:
    """The ``--epochs`` of a ready schedule's header command (its epoch ranges are written for it)."""
    found = re.search(r"--epochs (\d+)", path.read_text())
    if found is None:
        raise SystemExit(f"{path.name}: its header names no --epochs")
    return int(found.group(1))


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
    busy: float = 0.0  # busy_share of its epochs


def ensure_trained(training: Training, cache: Path, runner: Callable[[Sequence[str]], int] = run_app) -> Trained:
    """The cached training, or a run of it now (resumed from the last checkpoint an interrupted run left; its
    teacher trained first)."""
    folder = cache / training.key()
    done = folder / "done.json"
    if done.is_file():
        record = json.loads(done.read_text())
        # the time from the runs' epochs, not the record, so that how it is estimated can change under a cache
        return Trained(folder / record["checkpoint"], record["summary"], train_seconds(folder / "runs"),
                       cached=True, busy=busy_share(folder / "runs"))
    folder.mkdir(parents=True, exist_ok=True)
    schedule_file = None
    if training.schedule is not None:
        schedule_file = folder / "schedule.yaml"
        atomic_write_text(schedule_file, training.schedule)
    resume = last_checkpoint(folder / "runs")
    teacher = ensure_trained(training.teacher, cache, runner).checkpoint if training.teacher is not None else None
    if runner(training.command(folder / "runs", schedule_file, resume, teacher)) != 0:
        raise SystemExit(f"training {training.name!r} failed (its runs are in {folder / 'runs'})")
    run = latest_run(folder / "runs")
    summary = json.loads((run / "summary.json").read_text())
    record = {"checkpoint": str((run / "checkpoint.pth.tar").relative_to(folder)), "summary": summary,
              "train_seconds": train_seconds(folder / "runs"), "training": asdict(training)}
    atomic_write_json(done, record)
    return Trained(run / "checkpoint.pth.tar", summary, record["train_seconds"], busy=busy_share(folder / "runs"))


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


def epoch_seconds(runs: Path) -> List[float]:
    """The wall-clock seconds of every epoch any run under ``runs`` trained (metrics.csv's ``seconds``)."""
    seconds: List[float] = []
    for run in sorted(runs.iterdir()):
        if (run / "metrics.csv").is_file():
            with open(run / "metrics.csv") as f:
                seconds += [float(row.get("seconds") or 0.0) for row in csv.DictReader(f)]
    return seconds


def train_seconds(runs: Path) -> float:
    """How long the training takes: its median epoch's time times its epochs. The median, not the sum, because
    the benchmark's hours of training share the machine with other work, and an epoch slowed by it would
    otherwise count in full (the sum is kept beside it, see ``busy_share``)."""
    seconds = sorted(epoch_seconds(runs))
    if not seconds:
        return 0.0
    middle = len(seconds) // 2
    median = seconds[middle] if len(seconds) % 2 else (seconds[middle - 1] + seconds[middle]) / 2
    return median * len(seconds)


def busy_share(runs: Path) -> float:
    """How much longer than ``train_seconds`` the epochs' summed time was (0.1: 10% longer): other work on the
    machine while it trained."""
    expected = train_seconds(runs)
    return max(0.0, sum(epoch_seconds(runs)) / expected - 1.0) if expected else 0.0


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
    """The exit rules of one model with exits, on logits collected once per split.

    ``reference``: the backbone speed and MACs are measured against (default: the model's own backbone; the
    dense network trained alone for a pruned and thinned one, so that its factors are end to end)."""

    def __init__(self, trained: Trained, training: Training, timing: bool, reference: Optional[Any] = None):
        import torch

        import distill_ee
        from distill_ee.apputils.datasets import make_loaders
        from distill_ee.early_exit.calibrate import exit_costs
        from distill_ee.early_exit.stats import collect_exit_logits
        from distill_ee.modules import eval_mode
        from distill_ee.summaries import total_macs

        splits = load_splits(training.data, training.dataset)
        self.model = load_model(training.arch, trained.checkpoint, splits.info)
        self.exits = distill_ee.EarlyExits.of(self.model)
        _, valid, test = make_loaders(splits, 256)
        multi = self.exits.multi_exit_model().eval()
        with eval_mode(multi), torch.no_grad():
            self.valid = collect_exit_logits(multi, valid)
            self.test = collect_exit_logits(multi, test)
        self.costs = exit_costs(multi, self.model)
        self.inputs = torch.cat([x for x, _ in test])
        self.timing = timing
        self.reference = reference if reference is not None else self.model
        example = torch.zeros(1, *splits.info.input_shape)
        #: this backbone's MACs as a share of the reference's (1 unless pruned and thinned)
        self.scale = 1.0 if reference is None else self.costs.full_macs / float(total_macs(reference, example)[0])

    def criteria(self, rule: str) -> Any:
        """The criteria of ``rule``; ``own``: the exits' own (gates bound to their trained deciders)."""
        from distill_ee.early_exit.criteria import criteria_list

        if rule == "own":
            return self.exits.exit_set.criterion_objects()
        return criteria_list(rule, len(self.exits.exit_names))

    def row(self, rule: str, target: str, confidence: Optional[float] = None) -> Dict[str, Any]:
        """Calibrate ``rule`` for ``target`` on validation (certified at ``confidence`` when given); its test
        figures and speed."""
        from distill_ee.apputils.calibration import parse_target
        from distill_ee.early_exit.calibrate import calibrate
        from distill_ee.early_exit.risk import Guarantee

        criteria = self.criteria(rule)
        certificate = None
        if rule == "patience":  # its threshold is a count: searched here, as calibration searches confidences
            thresholds = self.patience_choice(criteria, parse_target(target))
        else:
            guarantee = Guarantee(confidence=confidence) if confidence else None
            chosen = calibrate(*self.valid, criteria, self.costs.macs_per_exit, self.costs.full_macs,
                               parse_target(target), branch_macs=self.costs.branch_macs, guarantee=guarantee)
            thresholds, certificate = chosen.thresholds, chosen.certificate
        row = self.figures(criteria, thresholds)
        if certificate is not None:
            c = certificate
            row["certificate"] = {"target": c.target, "bound": c.bound, "delta": c.delta,
                                  "certified": c.certified, "tested": len(c.tested),
                                  "smallest_target": c.smallest_target}
        return row

    def figures(self, criteria: Any, thresholds: Sequence[Optional[float]]) -> Dict[str, Any]:
        """Test top-1, MACs (% of the reference), exits taken and, when timing, speed of one setting."""
        from distill_ee.early_exit.tradeoff import measure_point

        point = measure_point(*self.test, criteria, thresholds, self.costs)
        final = 100.0 * float((self.test[0][-1].argmax(1) == self.test[1]).double().mean())
        row = {"top1": point.top1, "macs_pct": 100.0 * point.macs_fraction * self.scale,
               "taken_pct": point.taken_pct, "thresholds": list(thresholds), "final_top1": final,
               "test_images": int(self.test[1].numel())}
        if self.timing:
            row["speed"] = self.speed(criteria, thresholds)
        return row

    def learned_row(self, target: str, tradeoffs: Sequence[float] = ()) -> Dict[str, Any]:
        """A learned exit policy (a decider per exit, cost-sensitive, trained on the validation logits) at the
        trade-off meeting ``target`` on validation, chosen as calibration chooses thresholds."""
        from distill_ee.early_exit.deciders import LearnedPolicyCriterion, build_decider, default_head
        from distill_ee.early_exit.learned_policy import policy_curve
        from distill_ee.early_exit.tradeoff import measure_point

        names = self.exits.exit_names
        classes = int(self.valid[0][0].shape[1])
        deciders = [build_decider(default_head(), classes, exit_name=n, path=f"benchmark.{n}") for n in names]
        grid = list(tradeoffs) or [0.0] + [0.01 * 2.0 ** (k / 2) for k in range(13)]
        curve = policy_curve(deciders, *self.valid, self.costs, grid)
        final = measure_point(*self.valid, self.criteria("entropy"), [None] * len(names), self.costs).top1
        chosen = choose_point(curve, lambda p: p.valid, final, parse_target_value(target))
        for decider, state in zip(deciders, chosen.state):
            decider.load_state_dict(state)
        row = self.figures([LearnedPolicyCriterion(d.eval()) for d in deciders], [0.5] * len(names))
        row["tradeoff"] = chosen.tradeoff
        return row

    def patience_choice(self, criteria: Any, target: Any) -> List[Optional[float]]:
        """The patience (one count for every exit, or every exit off) meeting ``target`` on validation."""
        from distill_ee.early_exit.tradeoff import measure_point

        n = len(self.exits.exit_names)
        settings = [[float(k)] * n for k in range(1, n + 1)] + [[None] * n]
        points = [measure_point(*self.valid, criteria, t, self.costs) for t in settings]
        return settings[points.index(choose_point(points, lambda p: p, points[-1].top1, target))]

    def speed(self, criteria: Any, thresholds: Sequence[Optional[float]]) -> Dict[str, Any]:
        """Real early exit against the reference backbone at batch 256 and batch 1, with the oracle bound."""
        from distill_ee.apputils.timing import compare_speed
        from distill_ee.early_exit.multi_exit import MultiExitModel

        timed = MultiExitModel.from_model(self.model, self.exits.exit_set, criterion=criteria,
                                          thresholds=list(thresholds)).eval()
        return {str(batch): compare_speed(self.reference, timed, self.inputs[:n], batch, repeats=repeats)
                for batch, n, repeats in SPEED_RUNS}


def choose_point(points: Sequence[Any], figures: Callable[[Any], Any], final_top1: float, target: Any) -> Any:
    """The point meeting ``target`` on validation: for a drop, the cheapest within it of ``final_top1``; for a
    MACs share, the most accurate within it (else the cheapest). ``figures(point)`` has top1 and macs_fraction."""
    if target.kind == "drop":
        fit = [p for p in points if figures(p).top1 >= final_top1 - target.value]
        return min(fit or points, key=lambda p: figures(p).macs_fraction)
    fit = [p for p in points if figures(p).macs_fraction <= target.value]
    if not fit:
        return min(points, key=lambda p: figures(p).macs_fraction)
    return max(fit, key=lambda p: figures(p).top1)


def parse_target_value(text: str) -> Any:
    """A calibration target as ``--ee-calibrate`` writes it (``drop=0.5``, ``macs=0.5``)."""
    from distill_ee.apputils.calibration import parse_target

    return parse_target(text)


def backbone_row(s: Dict[str, Any]) -> Dict[str, Any]:
    """A network's test figures from its summary (the test images counted by its per-class rows)."""
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
    training: str = ""  # the plan's name of the training it comes from
    busy: float = 0.0  # the largest busy_share of the trainings counted in train_seconds


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
    out["training"] = f"{line.train_seconds / 60:.1f} min{BUSY_MARK if line.busy > BUSY_SHARE else ''}"
    out["notes"] = line.reference or f.get("note", "")
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


# --------------------------------------------------------------------------- which rows, from which training
RowList = List[Tuple[str, Dict[str, Any]]]


@dataclass
class RowPlan:
    """Rows computed from one training: one setting (or one family's rows), cached by ``spec``."""

    label: str
    training: str  # its model's architecture is the row's backbone
    spec: Dict[str, Any]
    compute: Callable[["Bench"], RowList]
    needs: Tuple[str, ...] = ()  # other trainings its rows read
    counted: Tuple[str, ...] = ()  # those of them whose training time is part of the method's


class Bench:
    """What the rows are computed from: the plan, its trained models, and what is loaded once for several rows."""

    def __init__(self, plan: Dict[str, Training], trained: Dict[str, Trained], timing: bool):
        self.plan, self.trained, self.timing = plan, trained, timing
        self._exit_rows: Dict[str, ExitRows] = {}
        self._reference: Any = None

    def rows(self, cache: Path, row_plan: RowPlan) -> RowList:
        """The rows of ``row_plan``, from the cache or computed now."""
        spec = {**row_plan.spec, "timing": self.timing}
        stored = cached_row(cache, self.plan[row_plan.training], spec,
                            lambda: {"rows": [list(r) for r in row_plan.compute(self)]})
        if "rows" not in stored:  # a single setting's figures (the first version's rows)
            return [(row_plan.label, stored)]
        return [(method, figures) for method, figures in stored["rows"]]

    def exit_rows(self, name: str, end_to_end: bool = False) -> ExitRows:
        """The exit rules of training ``name`` (against the dense ResNet-20 when ``end_to_end``)."""
        if name not in self._exit_rows:
            reference = self.reference() if end_to_end else None
            self._exit_rows[name] = ExitRows(self.trained[name], self.plan[name], self.timing, reference)
        return self._exit_rows[name]

    def reference(self) -> Any:
        """The dense ResNet-20 trained alone (the backbone end-to-end factors are measured against)."""
        if self._reference is None:
            from distill_ee.apputils.datasets import dataset_info

            plan = self.plan["resnet20"]
            self._reference = load_model(plan.arch, self.trained["resnet20"].checkpoint, dataset_info(plan.dataset))
        return self._reference

    def checkpoint(self, name: str) -> Tuple[str, Path, Optional[str]]:
        """Architecture, checkpoint and data directory of training ``name``."""
        return self.plan[name].arch, self.trained[name].checkpoint, self.plan[name].data


def setting(label: str, training: str, rule: str, target: str, confidence: Optional[float] = None,
            end_to_end: bool = False, kind: str = "rule") -> RowPlan:
    """One exit setting calibrated on validation: a rule (``own``: the exits' trained gates) or the learned
    policy (``kind="learned"``)."""
    spec: Dict[str, Any] = {"rule": rule, "target": target, "confidence": confidence}
    if kind != "rule":
        spec["kind"] = kind

    def compute(bench: Bench) -> RowList:
        rows = bench.exit_rows(training, end_to_end)
        return [(label, rows.learned_row(target) if kind == "learned" else rows.row(rule, target, confidence))]

    return RowPlan(label, training, spec, compute, ("resnet20",) if end_to_end else ())


def family(label: str, training: str, kind: str, compute: Callable[[Bench], RowList],
           needs: Tuple[str, ...] = (), counted: Tuple[str, ...] = ()) -> RowPlan:
    """The rows of one family of methods computed together (``benchmarks/dynamic/``)."""
    return RowPlan(label, training, {"kind": kind}, compute, needs, counted)


def routing(method: str, name: str) -> RowPlan:
    """SkipNet or BlockDrop: accuracy, blocks run and how per-sample the routing is."""
    def compute(bench: Bench) -> RowList:
        from benchmarks.dynamic.routing import routing_rows
        return routing_rows(*bench.checkpoint(name), bench.timing, method)
    return family(method, name, "routing", compute)


def anytime(method: str, name: str) -> RowPlan:
    """MSDNet or RANet: every classifier alone, then the budgeted batch rule and the macs=0.5 search."""
    def compute(bench: Bench) -> RowList:
        from benchmarks.dynamic.anytime import anytime_rows
        return anytime_rows(*bench.checkpoint(name), bench.timing, method)
    return family(method, name, "anytime", compute)


def int8(method: str) -> RowPlan:
    """The pipeline deployed on ONNX Runtime, fp32 and int8, against the dense fp32 backbone in PyTorch."""
    def compute(bench: Bench) -> RowList:
        from benchmarks.dynamic.deploy import int8_rows
        return int8_rows(*bench.checkpoint("pipeline"), bench.timing, bench.reference(), method)
    return family(f"{method} on ONNX Runtime", "pipeline", "int8", compute, needs=("resnet20",))


def cascade() -> RowPlan:
    """LeNet answering when confident, ResNet-20 otherwise."""
    def compute(bench: Bench) -> RowList:
        from benchmarks.dynamic.cascade import cascade_rows
        little, big = bench.checkpoint("lenet"), bench.checkpoint("resnet20")
        return cascade_rows(little[:2], big[:2], little[2], bench.timing)
    return family("Big/Little cascade", "resnet20", "cascade", compute, needs=("lenet",), counted=("lenet",))


def distilled() -> RowPlan:
    """The LeNet taught by the ResNet-20 (knowledge distillation), to set beside the LeNet trained alone."""
    def compute(bench: Bench) -> RowList:
        return [(KD_ROW, backbone_row(bench.trained["lenet_kd"].summary))]
    return family("knowledge distillation", "lenet_kd", "kd", compute, needs=("resnet20",), counted=("resnet20",))


def row_plans() -> List[RowPlan]:
    """Every row after the backbones, in the table's order."""
    plans = [distilled()]
    plans += [setting(f"exits, {rule}, {target}", "resnet20_exits", rule, target)
             for rule in RULES for target in TARGETS]
    plans += [setting(f"exits, entropy, {target}, certified at {CONFIDENCE:g}", "resnet20_exits", "entropy", target,
                      CONFIDENCE) for target in GUARANTEED]
    plans += [setting(f"learned policy, {target}", "resnet20_exits", "learned", target, kind="learned")
              for target in TARGETS]
    plans += [setting(f"gates (trained jointly), {target}", "gates", "own", target) for target in TARGETS]
    plans += [setting(f"IMTA exits, entropy, {target}", "imta", "entropy", target) for target in TARGETS]
    pipeline = "AGP filters + thinning + exits"
    plans += [setting(f"{pipeline}, entropy, {target}", "pipeline", "entropy", target, end_to_end=True)
              for target in ("drop=0.5", "drop=1")]
    plans += [int8(pipeline), routing("SkipNet", "skipnet"), routing("BlockDrop", "blockdrop"),
              anytime("MSDNet", "msdnet"), anytime("RANet", "ranet"), cascade()]
    return plans


# --------------------------------------------------------------------------- the benchmark
def trainings(epochs: int, data: Optional[str]) -> Dict[str, Training]:
    """Every training the table needs, the cheapest first: schedules written for Fashion-MNIST
    (``*_fmnist.*``) keep their own epochs, the others run for ``epochs``."""
    plain = {"lr_schedulers": {"training_lr": {"class": "CosineAnnealingLR", "T_max": epochs}},
             "policies": [{"lr_scheduler": {"instance_name": "training_lr"}, "starting_epoch": 0,
                           "ending_epoch": 1000, "frequency": 1}], "version": 1}
    cosine = yaml.safe_dump(plain, sort_keys=False)
    flags = ("--lr", "0.1", "-b", "128")

    def ready(name: str, arch: str, schedule: str) -> Training:
        path = ROOT / "schedules" / schedule
        own = header_epochs(path) if "_fmnist." in schedule else epochs
        return Training(name, arch, own, schedule=schedule_text(path, own), flags=flags, data=data)

    lenet = Training("lenet", "lenet_mnist", epochs, schedule=cosine, flags=("--lr", "0.05", "-b", "128"), data=data)
    resnet20 = Training("resnet20", "resnet20_cifar", epochs, schedule=cosine, flags=flags, data=data)
    return {
        "lenet": lenet,
        "resnet20": resnet20,
        "lenet_kd": replace(lenet, name="lenet_kd", flags=lenet.flags + KD_FLAGS, teacher=resnet20),
        "resnet20_exits": ready("resnet20_exits", "resnet20_cifar", "resnet20_mnist.earlyexit.yaml"),
        "pipeline": ready("pipeline", "resnet20_cifar", "resnet20_fmnist.agp_thinning_exits.yaml"),
        "skipnet": ready("skipnet", "resnet20_cifar", "resnet20_fmnist.skipnet.yaml"),
        "blockdrop": ready("blockdrop", "resnet20_cifar", "resnet20_fmnist.blockdrop.yaml"),
        "gates": ready("gates", "resnet20_cifar", "resnet20_mnist.gates.yaml"),
        "msdnet": ready("msdnet", "msdnet_mnist", "msdnet_mnist.yaml"),
        "imta": ready("imta", "resnet20_cifar", "resnet20_mnist.imta.yaml"),
        "ranet": ready("ranet", "ranet_mnist", "ranet_mnist.yaml"),
    }


#: the ready schedules whose header result this benchmark writes, by the training that runs their command
READY = {"pipeline": "resnet20_fmnist.agp_thinning_exits.yaml", "skipnet": "resnet20_fmnist.skipnet.yaml",
         "blockdrop": "resnet20_fmnist.blockdrop.yaml"}
BEGIN, END = HEADER_BEGIN, HEADER_END


def header_result(name: str, record: Dict[str, Any], lines: Sequence[Line]) -> List[str]:
    """The result lines of a ready schedule's header from its training's ``record`` (the app's own summary),
    then the table's rows of training ``name``."""
    s = record["summary"]
    text = [f"Result of this command ({record['train_seconds'] / 60:.1f} min of training; {record['measured']}): "
            f"test top-1 "
            f"{s['top1']:.2f}%" + (f" (final exit {s['top1_final_exit']:.2f}%)" if "top1_final_exit" in s else "")
            + f", {s['params_nnz']:,} parameters. In benchmarks/dynamic_inference.py's table (docs/benchmarks.md):"]
    for line in lines:
        if line.training == name:
            c = cells(line)
            text.append(f"{line.method}: top-1 {c['test top-1 % (95% CI)']}, {c['expected MACs %']}% of the dense "
                        f"backbone's MACs, speedup batch 1 {c['speedup b1 (oracle)']}, batch 256 "
                        f"{c['speedup b256 (oracle)']}" + (f"; {c['notes']}" if c["notes"] else "") + ".")
    return wrap_comment(" ".join(text))


def write_header(path: Path, name: str, record: Dict[str, Any], lines: Sequence[Line]) -> None:
    """Replace the result block (between RESULT-BEGIN and RESULT-END) of ``path``'s header with training
    ``name``'s."""
    begin = f"{BEGIN} (written by benchmarks/dynamic_inference.py --write-docs from its run of this command)"
    text = path.read_text()
    new = replace_block(text, begin, END, "\n".join(header_result(name, record, lines)), path)
    if new != text:
        atomic_write_text(path, new)
    print(f"wrote the result into {path.name}'s header")


def claim_row(line: Line) -> ClaimRow:
    """What the paper claims read of a line."""
    f = line.figures
    return ClaimRow(line.method, f["top1"], f["test_images"], f["macs_pct"], f.get("speed"), f.get("note", ""))


def write_docs(path: Path, table: str, claims: str) -> None:
    """Replace the generated table and claims of ``path`` (between their BEGIN/END markers)."""
    text = path.read_text()
    for name, content in (("TABLE", table), ("CLAIMS", claims)):
        begin, end = f"<!-- {name}-BEGIN (generated) -->", f"<!-- {name}-END -->"
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}"
    atomic_write_text(path, text)
    print(f"wrote the table and the claims into {path}")


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
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of every training but the Fashion-MNIST schedules' own (default: 10)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST's directory (default: Debian's location)")
    parser.add_argument("--cache", default=str(ROOT / ".bench_cache" / "dynamic_inference"),
                        help="where trainings and rows are cached (default: .bench_cache/dynamic_inference)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="where the results file and the table are written")
    parser.add_argument("--no-timing", action="store_true", help="skip the wall-clock columns")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the table and claims into docs/benchmarks.md and each Fashion-MNIST schedule's "
                             "result into its header (once the results file has every row)")
    parser.add_argument("--available", action="store_true",
                        help="train nothing: the table of the trainings already cached")
    parser.add_argument("--train-only", action="store_true", help="run (or find) every training, then stop")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]",
                        help="train (or find) these trainings only; the others are left out as with --available, "
                             "their rows kept from the results file")
    args = parser.parse_args(argv)
    cache, out, started = Path(args.cache), Path(args.out), time.perf_counter()
    plan = trainings(args.epochs, args.data)
    trained = run_trainings(plan, cache, args, started)
    if args.train_only:
        return
    results = Results(out / "dynamic_inference.json")
    measured = machine()
    for name, t in trained.items():
        results.record_training(name, plan[name].key(), t.summary, t.train_seconds, measured, t.busy)
    bench = Bench(plan, trained, timing=not args.no_timing)
    plans = [p for p in row_plans() if p.training in trained and all(n in trained for n in p.needs)]
    for j, row_plan in enumerate(plans, start=1):
        progress(j, len(plans), f"{row_plan.label} ({row_plan.training})", started)
        counted = (row_plan.training, *row_plan.counted)
        seconds = sum(trained[n].train_seconds for n in counted)
        busy = max(trained[n].busy for n in counted)
        lines = [Line(method, plan[row_plan.training].arch, figures, seconds, training=row_plan.training, busy=busy)
                 for method, figures in bench.rows(cache, row_plan)]
        results.record_rows(row_plan.label, plan_keys(plan, row_plan), [asdict(line) for line in lines], measured)
    results.save()
    lines, missing = table_lines(plan, results)
    header = (f"Fashion-MNIST, {args.epochs} epochs per training (the `*_fmnist` schedules their own), "
              f"{lines[0].figures['test_images'] if lines else 10000:,} test images. Each row's run: "
              f"{'; '.join(sorted({r['measured'] for r in results.rows.values()}))} {TIME_NOTE}")
    if missing:
        print(f"{len(missing)} row group(s) have no results from this configuration yet: {', '.join(missing)}. "
              f"Train what they need with --only NAME[,NAME] (trainings: {', '.join(plan)}).")
    if not lines:
        return
    markdown = write_outputs(lines, out, header)
    summaries = {n: r["summary"] for n, r in results.trainings.items() if results.training(n, plan[n].key())}
    claims = claims_markdown([claim_row(line) for line in lines], summaries)
    atomic_write_text(out / "dynamic_inference_claims.md", claims)
    print(markdown, "\n", claims)
    if args.write_docs:
        if missing:
            raise SystemExit("--write-docs: the results file lacks the rows above; the docs keep their table")
        for name, schedule in READY.items():
            write_header(ROOT / "schedules" / schedule, name, results.trainings[name], lines)
        write_docs(ROOT / "docs" / "benchmarks.md", markdown, claims)


def run_trainings(plan: Dict[str, Training], cache: Path, args: argparse.Namespace, started: float
                  ) -> Dict[str, Trained]:
    """Every training this run uses: cached, or trained now unless ``--available`` or ``--only`` leave it out."""
    only = set(args.only.split(",")) if args.only else set(plan)
    if only - set(plan):
        print(f"dynamic_inference.py: --only: unknown training(s) {', '.join(sorted(only - set(plan)))}; "
              f"known: {', '.join(plan)}", file=sys.stderr)
        raise SystemExit(2)
    trained: Dict[str, Trained] = {}
    for i, (name, training) in enumerate(plan.items(), start=1):
        progress(i, len(plan), f"training {name} ({training.arch}, {training.epochs} epochs, key {training.key()})",
                 started)
        done = (cache / training.key() / "done.json").is_file()
        if (args.available or name not in only) and not done:
            print(f"    not trained here: its rows come from the results file, if there "
                  f"({'--available' if args.available else '--only'})", flush=True)
            continue
        trained[name] = ensure_trained(training, cache)
        print(f"    {'cached' if trained[name].cached else 'trained'}: test top-1 {trained[name].summary['top1']:.2f}"
              f", {trained[name].train_seconds / 60:.1f} min of training", flush=True)
    return trained


def plan_keys(plan: Dict[str, Training], row_plan: RowPlan) -> Dict[str, str]:
    """The keys of every training a row plan's figures come from."""
    return {n: plan[n].key() for n in (row_plan.training, *row_plan.needs)}


def table_lines(plan: Dict[str, Training], results: Results) -> Tuple[List[Line], List[str]]:
    """The table's lines from the results file, in the table's order, and the labels of what it lacks."""
    lines, missing = [], []
    for name in ("lenet", "resnet20"):
        record = results.training(name, plan[name].key())
        if record is None:
            missing.append(f"backbone alone ({plan[name].arch})")
            continue
        lines.append(Line(f"backbone alone ({plan[name].arch})", plan[name].arch, backbone_row(record["summary"]),
                          record["train_seconds"], REFERENCES[plan[name].arch], training=name,
                          busy=record.get("busy_share", 0.0)))
    for row_plan in row_plans():
        stored = results.lines(row_plan.label, plan_keys(plan, row_plan))
        if stored is None:
            missing.append(row_plan.label)
            continue
        lines += [Line(**line) for line in stored]
    return lines, missing


if __name__ == "__main__":
    main()
