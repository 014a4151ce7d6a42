"""Command-line flags of the sample app, as Distiller's compress_classifier.py users know them."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, List, NoReturn, Optional

from ..distiller_absent import absence_note
from ..errors import ConfigError
from ..file_names import name_problem
from .tracking import add_tracking_flags, check_tracking


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
                   help="dataset directory (not needed for the embedded default mnist5k); without --dataset, "
                        "the dataset is inferred from --arch as Distiller does (cifar10, mnist or imagenet)")
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
    p.add_argument("--deterministic", "--det", action="store_true", help="deterministic CPU/GPU algorithms")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--gpus", default=None, metavar="DEV_ID",
                   help="comma-separated GPU ids (the first is used; under torchrun, one per process on the machine, "
                        "in local-rank order)")
    p.add_argument("--dist-backend", choices=["gloo", "nccl", "mpi", "ucc"], default=None,
                   help="torch.distributed backend under torchrun (default: nccl with GPUs, gloo on the CPU)")
    p.add_argument("-n", "--name", default=None, help="experiment name (default: the architecture)")
    p.add_argument("-o", "--out-dir", default="logs", help="output directory (default: logs)")
    p.add_argument("--bad-images", choices=["stop", "skip"], default="stop",
                   help="imagefolder/imagenet: an image file that fails the check before training (unreadable, "
                        "truncated, a decompression bomb) or a symlink loop stops the run with one line (stop, "
                        "default) or is left out and counted in the log (skip)")
    p.add_argument("--image-check", choices=["header", "decode"], default="header",
                   help="imagefolder/imagenet: how each image file is checked before training: its format, size "
                        "and end (header, default) or every pixel decoded as training does (decode, slower)")
    p.add_argument("--summary", type=str.lower, choices=SUMMARY_CHOICES, action="append",
                   help="print a summary of the (resumed) model and exit: sparsity, compute, model, modules (the "
                        "leaf modules' names and types), png or png_w_params (the graph drawn to model.png in the "
                        "run directory, with the parameters' shapes)")
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
    q.add_argument("--qe-mode", "--qem", choices=list(QE_MODES), default=None,
                   help="quantization mode of activations and weights (default sym)")
    q.add_argument("--qe-mode-acts", "--qema", choices=list(QE_MODES), default=None,
                   help="mode of the activations only")
    q.add_argument("--qe-mode-wts", "--qemw", choices=list(QE_MODES), default=None, help="mode of the weights only")
    q.add_argument("--qe-bits-acts", "--qeba", type=int, default=None, metavar="N",
                   help="bits of activations (default 8)")
    q.add_argument("--qe-bits-wts", "--qebw", type=int, default=None, metavar="N", help="bits of weights (default 8)")
    q.add_argument("--qe-bits-accum", type=int, default=None, metavar="N", help="bits of accumulators (32)")
    q.add_argument("--qe-per-channel", "--qepc", action="store_true", help="one weight range per output channel")
    q.add_argument("--qe-clip-acts", "--qeca", choices=["none", "avg", "n_std", "gauss", "laplace"], default=None,
                   help="activation ranges: none (min/max), avg (average of per-sample min/max), n_std, or ACIQ's "
                        "gauss and laplace")
    q.add_argument("--qe-clip-n-stds", type=float, default=None, metavar="N",
                   help="with --qe-clip-acts n_std: how many standard deviations (default 3)")
    q.add_argument("--qe-no-quant-layers", "--qenql", nargs="+", default=None, metavar="LAYER",
                   help="layers (names or regular expressions) left in float")
    q.add_argument("--qe-no-clip-layers", "--qencl", nargs="+", default=None, metavar="LAYER",
                   help="with --qe-clip-acts other than none: layers (names or regular expressions) whose "
                        "activations keep their full min/max range")
    q.add_argument("--qe-scale-approx-bits", "--qesab", type=int, default=None, metavar="N",
                   help="requantize each layer's output from its accumulator with an N-bit integer multiplier and "
                        "a shift instead of a float scale (2 to 32)")
    q.add_argument("--qe-save-fp-weights", action="store_true",
                   help="keep the FP32 weights in quantized_checkpoint.pth.tar (they always are: the "
                        "quantization is simulated from them)")
    q.add_argument("--qe-convert-pytorch", "--qept", nargs=0, action=_AbsentOption, note="--qe-convert-pytorch",
                   help=argparse.SUPPRESS)
    q.add_argument("--qe-pytorch-backend", nargs="?", action=_AbsentOption, note="--qe-convert-pytorch",
                   help=argparse.SUPPRESS)
    q.add_argument("--qe-lapq", "--qe-coordinate-search", nargs=0, action=_AbsentOption, note="--qe-lapq",
                   help=argparse.SUPPRESS)
    for flag in LAPQ_FLAGS:
        q.add_argument(flag, nargs="?", action=_AbsentOption, note="--qe-lapq", help=argparse.SUPPRESS)
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
    d = p.add_argument_group("Distiller's data and logging flags")
    d.add_argument("--validation-split", "--valid-size", "--vs", type=_fraction, default=0.1, dest="valid_size",
                   metavar="SHARE", help="share of the training data held out for validation, in [0, 1) (default: 0.1)")
    d.add_argument("--effective-train-size", "--etrs", type=_portion, default=1.0, metavar="PORTION",
                   help="portion of the training split used in each epoch, in (0, 1]: a new random portion each "
                        "epoch, the same ones again under --seed (default: 1)")
    d.add_argument("--effective-valid-size", "--evs", type=_portion, default=1.0, metavar="PORTION",
                   help="portion of the validation split used, in (0, 1]: a fixed subset chosen by --seed "
                        "(default: 1)")
    d.add_argument("--effective-test-size", "--etes", type=_portion, default=1.0, metavar="PORTION",
                   help="portion of the test split used, in (0, 1]: a fixed subset chosen by --seed (default: 1)")
    d.add_argument("--num-best-scores", type=int, default=1, metavar="N",
                   help="log the N best epochs after each epoch, ranked as Distiller ranks them (fewest nonzero "
                        "weights, then top-1, top-5, the later epoch) with their sparsity (default: 1)")
    d.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging: also the weights' sparsity table after each epoch")
    d.add_argument("--masks-sparsity", action="store_true",
                   help="log the pruning masks' sparsity table at the end of each epoch")
    d.add_argument("--confusion", action="store_true",
                   help="log the test confusion matrix of the model's output after the test (and put it in "
                        "summary.json)")
    d.add_argument("--activation-stats", "--act-stats", nargs="+", choices=["train", "valid", "test"],
                   default=[], metavar="PHASE",
                   help="collect activation statistics (sparsity, L1, APoZ and mean per channel of ReLU outputs; "
                        "records of Conv2d outputs) in the phases train, valid and/or test; written as YAML and "
                        "CSV to activation_stats/ in the run directory (not Excel files); slows training")
    d.add_argument("--activation-histograms", "--act-hist", type=_portion, default=None, metavar="PORTION",
                   help="histograms of every layer's inputs and output on this portion of the test split, in "
                        "(0, 1], written to activation_histograms.csv (and .png with matplotlib) in the run "
                        "directory; then exits")
    d.add_argument("--param-hist", action="store_true",
                   help="a histogram of every parameter after each epoch, appended to param_histograms.csv in "
                        "the run directory (a CSV; --tensorboard logs scalars, not these histograms)")
    _add_distiller_tools(p)
    add_tracking_flags(p)
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv); ``command`` keeps the command line, for the trackers."""
    args = _deprecated_resume(build_parser().parse_args(argv))
    args.command = [sys.argv[0], *sys.argv[1:]] if argv is None else ["compress_classifier.py", *argv]
    return args


def _deprecated_resume(args: argparse.Namespace) -> argparse.Namespace:
    """Distiller's deprecated ``--resume PATH``: ``--resume-from PATH --reset-optimizer`` (the app warns)."""
    if args.deprecated_resume is not None and not args.resume_from:
        args.resume_from, args.reset_optimizer = args.deprecated_resume, True
    return args


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
    if getattr(args, "deprecated_resume", None) and args.resume_from != args.deprecated_resume:
        raise ConfigError("--resume (Distiller's deprecated spelling) and --resume-from both name a checkpoint: "
                          "give --resume-from only")
    check_run_name(args.name)
    check_out_dir(args.out_dir)
    _check_sense_range(args.sense_range)
    if args.evaluate and not args.resume_from and not args.exp_load_weights_from and not args.pretrained:
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
    _check_distiller_tools(args)
    _check_data_and_logging(args)
    check_tracking(args)
    if args.gpus is not None and not all(part.strip().isdigit() for part in args.gpus.split(",")):
        raise ConfigError(f"--gpus takes comma-separated GPU numbers, e.g. 0 or 0,1; got {args.gpus!r}")


#: --qe-mode values -> Distiller's mode names
QE_MODES = {"sym": "SYMMETRIC", "sym_restr": "SYMMETRIC_RESTRICTED", "asym_u": "ASYMMETRIC_UNSIGNED",
            "asym_s": "ASYMMETRIC_SIGNED"}
#: the --qe flags that shape the quantizer (not allowed with --qe-config-file)
QE_SHAPING = ("qe_mode", "qe_mode_acts", "qe_mode_wts", "qe_bits_acts", "qe_bits_wts", "qe_bits_accum",
              "qe_per_channel", "qe_clip_acts", "qe_clip_n_stds", "qe_no_quant_layers", "qe_dynamic",
              "qe_no_clip_layers", "qe_scale_approx_bits")


def _check_qe(args: argparse.Namespace) -> None:
    """The --qe flags: only with --qe, numbers in range, the config file alone."""
    given = [a for a in (*QE_SHAPING, "qe_stats_file", "qe_calibration", "qe_config_file", "qe_save_fp_weights")
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
    if args.qe_scale_approx_bits is not None and not 2 <= args.qe_scale_approx_bits <= 32:
        raise ConfigError(f"--qe-scale-approx-bits is the integer multiplier's bits, from 2 to 32; got "
                          f"{args.qe_scale_approx_bits}")
    if args.qe_no_clip_layers and args.qe_clip_acts in (None, "none"):
        raise ConfigError("--qe-no-clip-layers applies only with --qe-clip-acts avg, n_std, gauss or laplace (with "
                          "none no layer's activations are clipped)")
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


def _portion(text: str) -> float:
    """A portion of a split: a number in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a portion in (0, 1], got {text}")
    return value


#: the flags that act once per training epoch: no use with --evaluate or a run that exits before training
_PER_EPOCH = (("--masks-sparsity", "masks_sparsity"), ("--param-hist", "param_hist"))


def _check_data_and_logging(args: argparse.Namespace) -> None:
    """Distiller's data and logging flags: counts in range, phases and splits that the run has."""
    if not 1 <= args.num_best_scores <= 10_000:
        raise ConfigError(f"--num-best-scores must be at least 1 and at most 10000, got {args.num_best_scores}")
    if args.valid_size == 0 and args.effective_valid_size != 1.0:
        raise ConfigError("--effective-valid-size/--evs applies to the validation split, and --vs 0 leaves none")
    phases = args.activation_stats
    if "valid" in phases and args.valid_size == 0:
        raise ConfigError("--activation-stats valid: --vs 0 leaves no validation split")
    if args.activation_histograms is not None and args.sense:
        raise ConfigError("--activation-histograms and --sense each run alone and exit: choose one")
    trains = not (args.evaluate or args.sense or args.activation_histograms is not None)
    if not trains:
        done = "--evaluate" if args.evaluate else "--sense" if args.sense else "--activation-histograms"
        given = [flag for flag, attr in _PER_EPOCH if getattr(args, attr)]
        given += [f"--activation-stats {p}" for p in ("train", "valid") if p in phases]
        if given:
            raise ConfigError(f"{given[0]} acts in each training epoch, and {done} trains none")


#: --summary's choices, Distiller's
SUMMARY_CHOICES = ("sparsity", "compute", "model", "modules", "png", "png_w_params")
#: LAPQ's own flags (Distiller's add_coordinate_search_args), refused with --qe-lapq's note
LAPQ_FLAGS = ("--lapq-maxiter", "--lapq-maxfev", "--lapq-method", "--lapq-basinhopping", "--lapq-bh",
              "--lapq-basinhopping-niter", "--lapq-bh-niter", "--lapq-init-mode", "--lapq-init-method",
              "--lapq-eval-size", "--lapq-eval-memoize-dataloader", "--lapq-search-clipping")
#: the greedy filter-pruning search's own flags (Distiller's add_greedy_pruner_args), refused with --greedy's note
GREEDY_FLAGS = ("--greedy-ft-epochs", "--greedy-target-density", "--greedy-pruning-step",
                "--greedy-finetuning-policy")


class _AbsentOption(argparse.Action):
    """A Distiller option not implemented here: giving it stops the parse with absence_note's line (exit 2)."""

    def __init__(self, option_strings: List[str], dest: str, note: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=None, **kwargs)
        self.note = note

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        """Print ``prog: error: <the note>`` and exit with status 2."""
        note = absence_note("option", self.note) or f"{self.note!r} is not implemented here"
        prefix = "" if option_string == self.note else f"{option_string}: "
        print(f"{parser.prog}: error: {prefix}{note}", file=sys.stderr)
        raise SystemExit(2)


def _add_distiller_tools(p: argparse.ArgumentParser) -> None:
    """Distiller's sub-applications that act on the loaded model and exit, and the options refused here."""
    g = p.add_argument_group("Distiller's model tools (each acts on the loaded model, writes to the run "
                             "directory and exits)")
    g.add_argument("--exp-load-weights-from", metavar="PATH", default=None,
                   help="load only the weights (and the structure holding them: exits, thinning) of a checkpoint "
                        "and start fresh at epoch 0, with a new optimizer and schedule state")
    g.add_argument("--thinnify", action="store_true",
                   help="with --resume-from: remove the zero filters and channels, write the smaller model to "
                        "NAME_thinned_checkpoint.pth.tar in the run directory and exit")
    g.add_argument("--export-onnx", nargs="?", const="model.onnx", default=None, metavar="PATH",
                   help="write the model with a softmax output to PATH (default model.onnx; relative to the run "
                        "directory) as ONNX and exit; a model with exits also gets the multi-exit export in onnx/")
    g.add_argument("--load-serialized", action="store_true",
                   help="Distiller's 'do not wrap the model in DataParallel': the model never is here, so this "
                        "changes nothing")
    g.add_argument("--resume", dest="deprecated_resume", metavar="PATH", default=None, help=argparse.SUPPRESS)
    g.add_argument("--amc", nargs=0, action=_AbsentOption, note="--amc", help=argparse.SUPPRESS)
    g.add_argument("--greedy", nargs=0, action=_AbsentOption, note="--greedy", help=argparse.SUPPRESS)
    for flag in GREEDY_FLAGS:
        g.add_argument(flag, nargs="?", action=_AbsentOption, note="--greedy", help=argparse.SUPPRESS)


#: the sub-applications that load the model, act on it and exit, by attribute
_TOOLS = (("--thinnify", "thinnify"), ("--export-onnx", "export_onnx"), ("--summary", "summary"),
          ("--sense", "sense"), ("--evaluate", "evaluate"), ("--quantize-eval", "quantize_eval"),
          ("--ee-export", "ee_export"))


def _check_distiller_tools(args: argparse.Namespace) -> None:
    """--thinnify, --export-onnx and --exp-load-weights-from: what they need, and nothing that would not run."""
    if args.exp_load_weights_from and args.resume_from:
        raise ConfigError("--exp-load-weights-from and --resume-from both load a checkpoint: give one (weights only "
                          "and epoch 0, or the whole run state)")
    if args.thinnify and not args.resume_from:
        raise ConfigError("--thinnify needs the checkpoint to thin: give --resume-from CHECKPOINT")
    for flag, attr in _TOOLS[:2]:
        if getattr(args, attr) in (None, False):
            continue
        other = next((f for f, a in _TOOLS if a != attr and getattr(args, a) not in (None, False, [])), None)
        if other:
            raise ConfigError(f"{flag} acts on the loaded model and exits, so {other} would not run: give them in "
                              "separate runs")
    if args.export_onnx is not None:
        check_onnx_path(args.export_onnx)


def check_onnx_path(path: str) -> None:
    """``--export-onnx``: a file name ending in .onnx; a relative one stays inside the run directory."""
    if not path.endswith(".onnx") or os.path.basename(path) in ("", ".onnx"):
        raise ConfigError(f"--export-onnx {path}: give a file name ending in .onnx, e.g. model.onnx")
    if not os.path.isabs(path) and ".." in path.replace("\\", "/").split("/"):
        raise ConfigError(f"--export-onnx {path}: a relative path is inside the run directory and cannot contain "
                          "'..'; give an absolute path to write elsewhere")
    if os.path.isabs(path):
        if os.path.lexists(path):
            raise ConfigError(f"--export-onnx {path}: the file exists already (it is not overwritten); remove it "
                              "or give another path")
        if not os.path.isdir(os.path.dirname(path)):
            raise ConfigError(f"--export-onnx {path}: the folder {os.path.dirname(path)} does not exist")
