"""Command-line flags of the sample app, as Distiller's compress_classifier.py users know them."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, List, NoReturn, Optional

from ..errors import ConfigError
from ..file_names import name_problem


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and a hint to ``--help`` (exit status 2, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see prog --help)`` and exit with status 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of compress_classifier.py."""
    p = OneLineErrorParser(
        prog="compress_classifier.py",
        description="Train or fine-tune a classifier under a compression schedule (early exit, pruning, "
                    "regularization, thinning, LR) and report what it bought. "
                    "`distill-ee check SCHEDULE --arch ARCH` validates a schedule and prints its plan.")
    p.add_argument("data", nargs="?", default=None, metavar="DATASET_DIR",
                   help="dataset directory (not needed for the embedded default mnist5k)")
    p.add_argument("-a", "--arch", default="lenet_mnist", help="model architecture (default: lenet_mnist)")
    p.add_argument("--dataset", default=None,
                   help="mnist5k (embedded, default), mnist, fashion_mnist, cifar10, imagenet, imagefolder")
    p.add_argument("-j", "--workers", type=int, default=0, help="data loading workers (default: 0)")
    p.add_argument("--epochs", type=int, default=10, help="number of training epochs (default: 10)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="minibatch size (default: 64)")
    p.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr", help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay", help="weight decay")
    p.add_argument("-p", "--print-freq", type=int, default=50, help="log every N minibatches")
    p.add_argument("--compress", metavar="SCHEDULE.yaml", help="compression schedule (YAML)")
    p.add_argument("--resume-from", metavar="PATH", help="checkpoint to resume training from")
    p.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume-from: start at epoch 0 with a fresh optimizer and schedule state")
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate the (resumed) model on the test set")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic CPU/GPU algorithms")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--gpus", default=None, metavar="DEV_ID",
                   help="comma-separated GPU ids (the first is used; under torchrun, one per process on the machine, "
                        "in local-rank order)")
    p.add_argument("--dist-backend", choices=["gloo", "nccl", "mpi", "ucc"], default=None,
                   help="torch.distributed backend under torchrun (default: nccl with GPUs, gloo on the CPU)")
    p.add_argument("-n", "--name", default=None, help="experiment name (default: the architecture)")
    p.add_argument("-o", "--out-dir", default="logs", help="output directory (default: logs)")
    p.add_argument("--vs", "--valid-size", type=_fraction, default=0.1, dest="valid_size",
                   help="share of the training data held out for validation (default: 0.1)")
    p.add_argument("--bad-images", choices=["stop", "skip"], default="stop",
                   help="imagefolder/imagenet: an image file that fails the check before training (unreadable, "
                        "truncated, a decompression bomb) or a symlink loop stops the run with one line (stop, "
                        "default) or is left out and counted in the log (skip)")
    p.add_argument("--image-check", choices=["header", "decode"], default="header",
                   help="imagefolder/imagenet: how each image file is checked before training: its format, size "
                        "and end (header, default) or every pixel decoded as training does (decode, slower)")
    p.add_argument("--summary", choices=["sparsity", "compute", "model"], action="append",
                   help="print a summary of the model and exit")
    p.add_argument("--pretrained", action="store_true", help="torchvision weights already on disk")
    p.add_argument("--earlyexit_thresholds", type=float, nargs="*", default=None,
                   help="early-exit thresholds (Distiller shorthand; the arch's default exit points)")
    p.add_argument("--earlyexit_lossweights", type=float, nargs="*", default=None,
                   help="early-exit loss weights; the final exit gets 1 - their sum")
    p.add_argument("--ee-calibrate", metavar="TARGET", default=None,
                   help="choose exit thresholds on the validation split: drop=0.5 (max top-1 drop in points vs "
                        "the final exit), macs=0.4 (average MACs budget, share of the backbone) or "
                        "proportions=0.5,0.3 (share of samples per exit)")
    p.add_argument("--ee-confidence", type=float, default=None, metavar="C",
                   help="with --ee-calibrate drop=/macs=: certify the choice for new data with probability C (e.g. "
                        "0.9): Learn-then-Test on the validation split")
    p.add_argument("--ee-consistency", choices=["risk", "textual"], default=None,
                   help="with --ee-confidence: bound the top-1 drop (risk, default) or the disagreement with the "
                        "final classifier (textual, needs no labels)")
    p.add_argument("--ee-latency-runtime", choices=["torch", "onnx"], default="torch",
                   help="with --ee-calibrate latency=F: the runtime whose per-stage times are measured (PyTorch, "
                        "or ONNX Runtime on an export of the model; default torch)")
    p.add_argument("--ee-latency-batch", type=int, default=1, metavar="N",
                   help="with --ee-calibrate latency=F: the batch size the times are measured at (default 1)")
    p.add_argument("--ee-temperature", action="store_true",
                   help="with --ee-calibrate: fit a softmax temperature per exit first")
    p.add_argument("--ee-no-recalibrate", action="store_true",
                   help="keep the schedule's thresholds even when pruning changed the backbone")
    p.add_argument("--ee-export", nargs="?", const="onnx", default=None, choices=["onnx", "torchscript"],
                   metavar="FORMAT",
                   help="write the stages, exit branches and deciders with a manifest: onnx (default; run dir "
                        "onnx/, run with real exits by distill_ee.deploy.MultiExitSession on ONNX Runtime, "
                        "without torch) or torchscript (torchscript/, distill_ee.early_exit.export.load_exported; "
                        "torch.jit is deprecated upstream)")
    q = p.add_argument_group("post-training quantization (Distiller's --qe flags)")
    q.add_argument("--quantize-eval", "--qe", action="store_true", dest="quantize_eval",
                   help="after training (or on --evaluate's checkpoint), quantize the model with "
                        "PostTrainLinearQuantizer (simulated; with --ee-export onnx, also a real int8 export), "
                        "recalibrate the exits' thresholds and report on the quantized model")
    q.add_argument("--qe-mode", choices=list(QE_MODES), default=None,
                   help="quantization mode of activations and weights (default sym)")
    q.add_argument("--qe-mode-acts", choices=list(QE_MODES), default=None, help="mode of the activations only")
    q.add_argument("--qe-mode-wts", choices=list(QE_MODES), default=None, help="mode of the weights only")
    q.add_argument("--qe-bits-acts", type=int, default=None, metavar="N", help="bits of activations (default 8)")
    q.add_argument("--qe-bits-wts", type=int, default=None, metavar="N", help="bits of weights (default 8)")
    q.add_argument("--qe-bits-accum", type=int, default=None, metavar="N", help="bits of accumulators (32)")
    q.add_argument("--qe-per-channel", action="store_true", help="one weight range per output channel")
    q.add_argument("--qe-clip-acts", choices=["none", "avg", "n_std", "gauss", "laplace"], default=None,
                   help="activation ranges: none (min/max), avg (average of per-sample min/max), n_std, or ACIQ's "
                        "gauss and laplace")
    q.add_argument("--qe-clip-n-stds", type=float, default=None, metavar="N",
                   help="with --qe-clip-acts n_std: how many standard deviations (default 3)")
    q.add_argument("--qe-no-quant-layers", nargs="+", default=None, metavar="LAYER",
                   help="layers (names or regular expressions) left in float")
    q.add_argument("--qe-dynamic", action="store_true",
                   help="activation ranges from each batch itself, not from statistics")
    q.add_argument("--qe-stats-file", default=None, metavar="STATS_YAML",
                   help="activation statistics (Distiller's stats YAML) instead of collecting them")
    q.add_argument("--qe-calibration", type=float, default=None, metavar="PORTION",
                   help="collect the activation statistics on this portion of the validation split (default: "
                        "all of it) and write them to quantization_stats.yaml in the run directory")
    q.add_argument("--qe-config-file", default=None, metavar="YAML",
                   help="a YAML with a quantizers: section (PostTrainLinearQuantizer); the other --qe flags "
                        "then cannot be given")
    p.add_argument("--kd-teacher", metavar="ARCH", default=None,
                   help="knowledge distillation: the teacher's architecture (a zoo name); with --kd-resume its "
                        "checkpoint (a project checkpoint restores the teacher's exits and thinning)")
    p.add_argument("--kd-resume", metavar="CKPT", default=None, help="the teacher's checkpoint")
    p.add_argument("--kd-pretrained", action="store_true", help="the teacher's pretrained weights (torchvision)")
    p.add_argument("--kd-temperature", "--kd-temp", type=float, default=1.0, dest="kd_temperature",
                   help="softmax temperature T of the distillation term (default 1)")
    p.add_argument("--kd-distill-wt", "--kd-dw", type=float, default=0.5, dest="kd_distill_wt",
                   help="weight of the distillation term (default 0.5)")
    p.add_argument("--kd-student-wt", "--kd-sw", type=float, default=0.5, dest="kd_student_wt",
                   help="weight of the student's own loss (default 0.5)")
    p.add_argument("--kd-teacher-wt", "--kd-tw", type=float, default=0.0, dest="kd_teacher_wt",
                   help="Distiller's weight of a trained teacher's loss; the teacher is frozen here, so only 0")
    p.add_argument("--kd-start-epoch", type=int, default=0, help="first epoch of distillation (default 0)")
    p.add_argument("--sense", choices=["element", "filter", "channel"], default=None,
                   help="sensitivity analysis of each weight to pruning; writes CSV and PNG, then exits")
    p.add_argument("--sense-range", type=float, nargs=3, default=[0.0, 0.95, 0.05],
                   metavar=("START", "END", "STEP"), help="sparsity levels of --sense (default 0 0.95 0.05)")
    p.add_argument("--no-timing", action="store_true", help="skip the wall-clock speed measurement")
    p.add_argument("--skip-checksum", action="store_true",
                   help="with --resume-from: load a checkpoint whose contents do not match its SHA-256")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv)."""
    return build_parser().parse_args(argv)


#: bounds of the numeric flags: (name, attribute, low, high, low is open)
_RANGES = (
    ("--epochs", "epochs", 0, 1_000_000, False),
    ("-b/--batch-size", "batch_size", 1, 1 << 20, False),
    ("-j/--workers", "workers", 0, 256, False),
    ("-p/--print-freq", "print_freq", 1, None, False),
    ("--lr", "lr", 0.0, None, True),
    ("--momentum", "momentum", 0.0, 1.0, False),
    ("--wd", "weight_decay", 0.0, None, False),
    ("--seed", "seed", 0, 2 ** 32 - 1, False),
    ("--ee-latency-batch", "ee_latency_batch", 1, 4096, False),
)
#: at most this many sparsity levels per weight in a sensitivity analysis
MAX_SENSE_LEVELS = 1000


def check_args(args: argparse.Namespace) -> None:
    """ConfigError for values and combinations of flags no run can use (before anything is read or written)."""
    for flag, attr, low, high, open_low in _RANGES:
        _check_range(flag, getattr(args, attr), low, high, open_low)
    if args.momentum is not None and args.momentum >= 1.0:
        raise ConfigError(f"--momentum must be below 1, got {args.momentum}")
    check_run_name(args.name)
    check_out_dir(args.out_dir)
    _check_sense_range(args.sense_range)
    if args.evaluate and not args.resume_from and not args.pretrained:
        raise ConfigError("--evaluate needs a trained model: give --resume-from CHECKPOINT (or --pretrained)")
    for flag, needs, given in (("--reset-optimizer", "--resume-from", args.resume_from),
                               ("--skip-checksum", "--resume-from", args.resume_from),
                               ("--ee-temperature", "--ee-calibrate", args.ee_calibrate),
                               ("--ee-confidence", "--ee-calibrate", args.ee_calibrate),
                               ("--ee-consistency", "--ee-confidence", args.ee_confidence)):
        if getattr(args, flag[2:].replace("-", "_")) and not given:
            raise ConfigError(f"{flag} applies only with {needs}")
    if args.ee_confidence is not None and not (math.isfinite(args.ee_confidence) and 0 < args.ee_confidence < 1):
        raise ConfigError(f"--ee-confidence is a probability in (0, 1), e.g. 0.9; got {args.ee_confidence}")
    if args.ee_confidence is not None and args.ee_calibrate and args.ee_calibrate.strip().lower().startswith("prop"):
        raise ConfigError("--ee-confidence certifies drop= and macs= targets, not fixed proportions")
    latency = bool(args.ee_calibrate) and args.ee_calibrate.strip().lower().startswith("latency")
    for flag, value, default in (("--ee-latency-runtime", args.ee_latency_runtime, "torch"),
                                 ("--ee-latency-batch", args.ee_latency_batch, 1)):
        if value != default and not latency:
            raise ConfigError(f"{flag} applies only with --ee-calibrate latency=F")
    if args.ee_calibrate is not None and args.valid_size == 0:
        raise ConfigError("--ee-calibrate chooses thresholds on the validation split, and --vs 0 leaves none")
    _check_kd(args)
    _check_qe(args)
    if args.gpus is not None and not all(part.strip().isdigit() for part in args.gpus.split(",")):
        raise ConfigError(f"--gpus takes comma-separated GPU numbers, e.g. 0 or 0,1; got {args.gpus!r}")


#: --qe-mode values -> Distiller's mode names
QE_MODES = {"sym": "SYMMETRIC", "sym_restr": "SYMMETRIC_RESTRICTED", "asym_u": "ASYMMETRIC_UNSIGNED",
            "asym_s": "ASYMMETRIC_SIGNED"}
#: the --qe flags that shape the quantizer (not allowed with --qe-config-file)
QE_SHAPING = ("qe_mode", "qe_mode_acts", "qe_mode_wts", "qe_bits_acts", "qe_bits_wts", "qe_bits_accum",
              "qe_per_channel", "qe_clip_acts", "qe_clip_n_stds", "qe_no_quant_layers", "qe_dynamic")


def _check_qe(args: argparse.Namespace) -> None:
    """The --qe flags: only with --qe, numbers in range, the config file alone."""
    given = [a for a in (*QE_SHAPING, "qe_stats_file", "qe_calibration", "qe_config_file")
             if getattr(args, a) not in (None, False)]
    if given and not args.quantize_eval:
        raise ConfigError(f"--{given[0].replace('_', '-')} applies only with --quantize-eval/--qe")
    for flag, value, low, high in (("--qe-bits-acts", args.qe_bits_acts, 2, 16), ("--qe-bits-wts", args.qe_bits_wts,
                                                                                  2, 16),
                                   ("--qe-bits-accum", args.qe_bits_accum, 8, 64)):
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{flag} must be at least {low} and at most {high}, got {value}")
    if args.qe_calibration is not None and not (math.isfinite(args.qe_calibration) and 0 < args.qe_calibration <= 1):
        raise ConfigError(f"--qe-calibration is a portion of the validation split in (0, 1], got {args.qe_calibration}")
    if args.qe_clip_n_stds is not None and (args.qe_clip_acts != "n_std" or not (
            math.isfinite(args.qe_clip_n_stds) and 0 < args.qe_clip_n_stds <= 100)):
        raise ConfigError(f"--qe-clip-n-stds takes a number in (0, 100] with --qe-clip-acts n_std, got "
                          f"{args.qe_clip_n_stds}")
    if args.qe_config_file is not None:
        shaping = [a for a in QE_SHAPING if getattr(args, a) not in (None, False)]
        if shaping:
            raise ConfigError(f"--{shaping[0].replace('_', '-')} cannot be given with --qe-config-file (its "
                              f"quantizers: section says how to quantize)")
    if args.quantize_eval and args.qe_stats_file is not None and args.qe_calibration is not None:
        raise ConfigError("--qe-stats-file and --qe-calibration both give the activation statistics: choose one")


def _check_kd(args: argparse.Namespace) -> None:
    """The --kd-* flags: a teacher to go with them, finite weights, a frozen teacher, a start within the run."""
    given = [flag for flag, value, default in (
        ("--kd-resume", args.kd_resume, None), ("--kd-pretrained", args.kd_pretrained, False),
        ("--kd-temperature", args.kd_temperature, 1.0), ("--kd-distill-wt", args.kd_distill_wt, 0.5),
        ("--kd-student-wt", args.kd_student_wt, 0.5), ("--kd-teacher-wt", args.kd_teacher_wt, 0.0),
        ("--kd-start-epoch", args.kd_start_epoch, 0)) if value != default]
    if args.kd_teacher is None:
        if given:
            raise ConfigError(f"{given[0]} applies only with --kd-teacher ARCH")
        return
    for flag, value in (("--kd-temperature", args.kd_temperature), ("--kd-distill-wt", args.kd_distill_wt),
                        ("--kd-student-wt", args.kd_student_wt)):
        if not math.isfinite(value) or value < 0 or (flag == "--kd-temperature" and value == 0):
            bound = "above 0" if flag == "--kd-temperature" else "of at least 0"
            raise ConfigError(f"{flag} must be a finite number {bound}, got {value}")
    if args.kd_teacher_wt:
        raise ConfigError("--kd-teacher-wt: the teacher is frozen here (eval mode, no gradients); only 0 is accepted")
    if args.kd_start_epoch < 0 or (args.epochs is not None and args.kd_start_epoch >= max(args.epochs, 1)):
        raise ConfigError(f"--kd-start-epoch must be an epoch of the run (0 to {max(args.epochs - 1, 0)}), got "
                          f"{args.kd_start_epoch}")


def _check_range(flag: str, value: Any, low: Any, high: Any, open_low: bool) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if (value <= low if open_low else value < low) or (high is not None and value > high):
        bound = f"above {low}" if open_low else f"at least {low}"
        bound += f" and at most {high}" if high is not None else ""
        raise ConfigError(f"{flag} must be {bound}, got {value}")


def check_run_name(name: Optional[str]) -> None:
    """``-n``: a plain name (it names the run directory)."""
    problem = None if name is None else name_problem(name)
    if problem:
        raise ConfigError(f"-n/--name {problem}; use -o/--out-dir to choose the folder")


def check_out_dir(path: str) -> None:
    """``-o``: a folder, or a path where one can be made (not a file, not a link to a missing folder)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ConfigError(f"-o/--out-dir {path}: is a symbolic link to {os.readlink(path)}, which does not exist")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"-o/--out-dir {path}: is not a directory")


def _check_sense_range(values: List[float]) -> None:
    start, end, step = values
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--sense-range takes three finite numbers, got {' '.join(map(str, values))}")
    if not (0.0 <= start < end <= 1.0 and step > 0):
        raise ConfigError(f"--sense-range needs 0 <= START < END <= 1 and STEP > 0, got {start} {end} {step}")
    if (end - start) / step > MAX_SENSE_LEVELS:
        raise ConfigError(f"--sense-range {start} {end} {step} asks for {int((end - start) / step):,} sparsity "
                          f"levels per weight; at most {MAX_SENSE_LEVELS} (use a larger STEP)")
