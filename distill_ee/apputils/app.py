"""The sample application behind compress_classifier.py: data, model, schedule, training, report."""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from torch import nn

from .. import distributed
from ..checkpoint import OptimizerStateError, load_checkpoint, read_checkpoint, save_checkpoint
from ..early_exit.calibrate import exit_costs
from ..attachment import backbone_parameters, export_problems, exporting
from ..early_exit.exits import EarlyExits
from ..early_exit.risk import Guarantee
from ..early_exit.export import export_torchscript
from ..early_exit.onnx_export import check_exportable, export_onnx
from ..deploy.quantize import quantize_export
from ..quantization.quantset import quantization_of
from ..modules import unwrap
from ..errors import CheckpointError, ConfigError, DistillEEError
from ..atomic import atomic_write_text
from ..schedule import read_schedule, schedule_from_text
from ..input_files import STDIN
from ..scheduler import CompressionScheduler
from ..epoch_scalars import exit_scalars, policy_scalars, sparsity_scalar
from ..summaries import compute_table, model_table, sparsity_table
from .args import check_args, parse_args
from .calibration import parse_target, recalibrate_session, run_calibration
from .kd import add_kd_policy, kd_summary
from .quantize_eval import is_quantized, prepare_quantizer, quantize_trained
from .learned_policy_files import run_learned_policy
from .datasets import check_inputs, check_trained_on, dataset_info, load_dataset, make_loaders
from .datasets.effective import effective_splits, loader_samples, train_portion
from .datasets.from_arch import resolve_dataset, saying_inferred
from .datasets.sharding import ORDER_STRIDE, shard_loaders
from .distiller_logs import EpochLogs, run_activation_histograms, test_extras
from .earlyexit_flags import SHORTHAND_FILE, require_exit_flags, shorthand_config
from .model_summary import draw_model_png, modules_table
from .model_tools import export_classifier_onnx, thinnify, thinned_name
from .models import create_model
from .report import final_report
from .run_dir import RunDir, setup_logging
from .sensitivity_files import run_sensitivity, sensitivity_levels
from .tracking import Tracker, finish, log_epoch, open_tracker
from .train import check_finite_weights, evaluate, train_one_epoch

log = logging.getLogger("distill_ee")
#: the name the copy of a schedule read from standard input gets in the run directory
STDIN_SCHEDULE_FILE = "schedule.yaml"

#: target used to recalibrate exit thresholds after pruning when --ee-calibrate is not given
AUTO_RECALIBRATION = "drop=0.5"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the app; user errors print one line and return 2."""
    args = parse_args(argv)
    try:
        return run(args)
    except DistillEEError as exc:
        print(f"error: {_rank_label()}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.leave()


def _rank_label() -> str:
    """``[rank N] `` on the processes other than rank 0 under torchrun, nothing otherwise."""
    return f"[rank {distributed.launch_rank()}] " if distributed.launch_rank() else ""


def seed_everything(seed: Optional[int], deterministic: bool) -> None:
    """Seed Python, NumPy and torch; make torch deterministic when asked."""
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def select_device(args: argparse.Namespace) -> torch.device:
    """CUDA when present (and not --cpu), otherwise the CPU; under torchrun, the GPU of this process's local
    rank (among --gpus when given)."""
    if args.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    ids = [int(i) for i in args.gpus.split(",")] if args.gpus else list(range(count))
    local = distributed.local_rank() if distributed.launched_by_torchrun() else 0
    if local >= len(ids):
        raise ConfigError(f"--gpus {args.gpus or ''}: {len(ids)} GPU(s) for the process of local rank {local}; "
                          "give one GPU per process on this machine")
    if ids[local] >= count:
        raise ConfigError(f"--gpus {args.gpus}: this machine has {count} GPU(s)")
    device = torch.device(f"cuda:{ids[local]}")
    torch.cuda.set_device(device)
    return device


def run(args: argparse.Namespace) -> int:
    """The whole job; see compress_classifier.py --help. Every input (flags, schedule, checkpoint, data) is
    checked before the run directory is made and before the first training step."""
    check_args(args)
    device = select_device(args)
    distributed.init_from_env(args.dist_backend or ("nccl" if device.type == "cuda" else "gloo"))
    world = distributed.world_size()
    if args.batch_size % world:
        raise ConfigError(f"--batch-size {args.batch_size} is the global batch, split among {world} processes: "
                          f"give a multiple of {world}")
    # the console now; the run's log file gets these lines once it exists. Only rank 0 logs more than errors.
    setup_logging(None, level=_log_level(args) if distributed.is_main() else logging.ERROR)
    if getattr(args, "deprecated_resume", None):
        log.warning("--resume is deprecated (as in Distiller): it means --resume-from %s --reset-optimizer",
                    args.resume_from)
    dataset, why = resolve_dataset(args.dataset, args.data, args.arch)
    args.dataset = dataset
    if args.ee_calibrate is not None:
        parse_target(args.ee_calibrate)
    schedule_text = _schedule_text(args)
    with saying_inferred(why, dataset, args.arch):
        info = dataset_info(dataset, args.data)
    seed_everything(args.seed, args.deterministic)
    model = create_model(args.arch, num_classes=info.num_classes, in_channels=info.input_shape[0],
                         pretrained=args.pretrained)
    example = torch.zeros(1, *info.input_shape)
    check_inputs(model, info, args.arch, torch.device("cpu"))
    if args.summary or args.thinnify or args.export_onnx is not None:
        return _model_tool(args, model, info, example, schedule_text, device) if distributed.is_main() else 0
    with saying_inferred(why, dataset, args.arch):
        splits = load_dataset(dataset, args.data, valid_size=args.valid_size, bad_images=args.bad_images,
                              image_check=args.image_check)
    if why:
        log.info("%s", why)
    test_portion = args.activation_histograms if args.activation_histograms is not None else \
        args.effective_test_size
    splits = effective_splits(splits, args.effective_valid_size, test_portion, args.seed or 0)
    loaders = make_loaders(splits, args.batch_size, args.workers, seed=args.seed, deterministic=args.deterministic)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = _make_scheduler(args, model, optimizer, example.to(device), schedule_text)
    scheduler = add_kd_policy(args, model, optimizer, scheduler, info.num_classes, info.input_shape[0],
                              example.to(device), device)
    quantizer = prepare_quantizer(args, model, scheduler, example.to(device))  # a bad config: before any output
    start_epoch, best = _resume(args, model, optimizer, scheduler, device, info)
    _check_quantizer(quantizer, model)
    exits = EarlyExits.of(model)
    _check_exit_flags(args, model, exits)
    _check_budget(args, exits, scheduler)
    trains = not (args.evaluate or args.sense or args.activation_histograms is not None)
    train_loaders = _process_loaders(args, splits, loaders) if trains else None
    run_dir = _open_run_dir(args, schedule_text, info) if distributed.is_main() else None
    tracker = open_tracker(args, run_dir) if run_dir is not None else None
    criterion = nn.CrossEntropyLoss().to(device)
    if args.sense:
        return _sensitivity(args, model, loaders, criterion, device, run_dir) if run_dir else 0
    if args.activation_histograms is not None:
        return run_activation_histograms(args, model, loaders[2], device, run_dir) if run_dir else 0
    if train_loaders is not None:
        best = _train(args, model, optimizer, scheduler, criterion, train_loaders, device, run_dir, start_epoch,
                      best, tracker)
    if run_dir is None:  # the other processes are done: rank 0 calibrates, reports and saves alone
        return 0
    quantized = quantize_trained(args, quantizer, model, loaders[1], run_dir) if quantizer is not None else {}
    calibration = _calibrate(args, scheduler, exits, loaders, run_dir)
    summary = final_report(args, dataset, model, scheduler, loaders, criterion, device, example, run_dir,
                           exits=exits)
    summary.update(test_extras(args, model, loaders[2], device, run_dir, info.num_classes))
    summary.update(calibration)
    summary.update(quantized)
    if quantized:
        summary["quantization"]["checkpoint"] = _save_quantized(run_dir, args, model, scheduler, summary)
    summary.update(kd_summary(args))
    if args.ee_export:
        summary["export"] = {"format": args.ee_export,
                             "files": _export(args.ee_export, model, exits, run_dir, loaders[1],
                                              _threshold_target(args))}
    if calibration and not args.evaluate:  # the last epoch trained (or the checkpoint's, if none was)
        _save(run_dir, args, max(args.epochs, start_epoch) - 1, model, optimizer, scheduler, best, False,
              extra=calibration)
    summary["processes"] = distributed.world_size()
    run_dir.write_json("summary.json", summary)
    finish(tracker, run_dir, summary, max(args.epochs, start_epoch) - 1,
           [run_dir.file("summary.json"), *_schedule_copy(args, run_dir)])
    log.info("Results in %s", run_dir.path)
    return 0


def _schedule_text(args: argparse.Namespace) -> Optional[str]:
    """The schedule to run, validated independently of the model: the --compress file or the one the
    --earlyexit_* flags describe."""
    shorthand = args.earlyexit_thresholds is not None or args.earlyexit_lossweights is not None
    if shorthand and args.compress:
        raise ConfigError("give early exits either in the --compress schedule or with --earlyexit_* flags")
    require_exit_flags(args.arch, shorthand, args.compress, args.resume_from)
    if shorthand:
        config = shorthand_config(args.arch, args.earlyexit_thresholds, args.earlyexit_lossweights, args.epochs)
        return yaml.safe_dump(config, sort_keys=False)
    if args.compress == "-" and distributed.launched_by_torchrun():
        raise ConfigError("--compress -: the processes torchrun starts do not share standard input; give the "
                          "schedule as a file")
    if args.compress:
        return read_schedule(args.compress, stdin=True).source.text
    return None


def _schedule_label(args: argparse.Namespace) -> str:
    """What messages call the run's schedule."""
    if args.compress == "-":
        return STDIN
    return args.compress or "the --earlyexit_* flags' schedule"


def _open_run_dir(args: argparse.Namespace, schedule_text: Optional[str], info: Any) -> RunDir:
    """The run directory, with the log file (holding what was logged so far) and the schedule's copy."""
    run_dir = RunDir(args.out_dir, args.name or args.arch)
    run_dir.trained_on = {"input_shape": list(info.input_shape), "num_classes": int(info.num_classes)}
    setup_logging(run_dir.log_file, level=_log_level(args))
    log.info("Log directory: %s", run_dir.path)
    log.info("Command: %s", " ".join(sys.argv))
    if schedule_text is not None:
        atomic_write_text(_schedule_copy(args, run_dir)[0], schedule_text)
    return run_dir


def _schedule_copy(args: argparse.Namespace, run_dir: RunDir) -> List[Path]:
    """The run directory's copy of the schedule (none without a schedule)."""
    if not (args.compress or args.earlyexit_thresholds is not None or args.earlyexit_lossweights is not None):
        return []
    name = Path(args.compress).name if args.compress and args.compress != "-" else \
        STDIN_SCHEDULE_FILE if args.compress else SHORTHAND_FILE
    return [run_dir.file(name)]


def _print_summaries(kinds: List[str], model: nn.Module, example: torch.Tensor,
                     run_dir: Optional[RunDir] = None) -> int:
    for kind in kinds:
        if kind == "sparsity":
            print(sparsity_table(model)[1])
        elif kind == "compute":
            print(compute_table(model, example)[1])
        elif kind == "modules":
            print(modules_table(model))
        elif kind in ("png", "png_w_params") and run_dir is not None:
            path = draw_model_png(model, run_dir.file("model.png"), with_params=kind == "png_w_params")
            log.info("Model graph drawn to %s", path)
        else:
            print(model_table(model))
    return 0


def _model_tool(args: argparse.Namespace, model: nn.Module, info: Any, example: torch.Tensor,
                schedule_text: Optional[str], device: torch.device) -> int:
    """Distiller's sub-applications --summary, --thinnify and --export-onnx: the model built, its schedule
    applied and its checkpoint loaded, then acted on once; no data is read and nothing is trained."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = _make_scheduler(args, model, optimizer, example.to(device), schedule_text)
    _resume(args, model, optimizer, scheduler, device, info)
    if args.summary and not any(kind.startswith("png") for kind in args.summary):
        return _print_summaries(args.summary, model, example.to(device))
    run_dir = _open_run_dir(args, schedule_text, info)
    if args.summary:
        return _print_summaries(args.summary, model, example.to(device), run_dir)
    if args.thinnify:
        before, after = thinnify(model, scheduler.masks if scheduler else None)
        path = run_dir.file(thinned_name(args.resume_from))
        save_checkpoint(path, model, scheduler=scheduler, epoch=0, arch=args.arch,
                        dataset=args.dataset or "mnist5k", **run_dir.trained_on)
        log.info("Thinned: parameters %s -> %s, written to %s (fine-tune it if its accuracy dropped)",
                 f"{before:,}", f"{after:,}", path)
        run_dir.write_json("summary.json", {"thinnify": {"checkpoint": path.name, "parameters_before": before,
                                                         "parameters_after": after}})
        return 0
    target = Path(args.export_onnx)
    target = target if target.is_absolute() else run_dir.file(args.export_onnx)
    export_classifier_onnx(model, tuple(info.input_shape), target)
    files = [str(target if target.is_absolute() and not target.is_relative_to(run_dir.path)
                 else target.relative_to(run_dir.path))]
    exits = EarlyExits.of(model)
    if exits is not None:
        files += _export("onnx", model, exits, run_dir)
    log.info("Exported the model (softmax output) to %s as ONNX%s", target,
             " and its exits to onnx/ (distill_ee.deploy.MultiExitSession)" if exits is not None else "")
    run_dir.write_json("summary.json", {"export_onnx": {"files": files}})
    return 0


def _save_quantized(run_dir: RunDir, args: argparse.Namespace, model: nn.Module,
                    scheduler: Optional[CompressionScheduler], summary: Dict[str, Any]) -> str:
    """Distiller's quantized checkpoint after --qe: the FP32 weights with the quantization's structure step and
    ranges (the quantization is simulated from them), epoch 0 and the quantized top-1."""
    name = f"{args.name}_quantized_checkpoint.pth.tar" if args.name else "quantized_checkpoint.pth.tar"
    save_checkpoint(run_dir.file(name), model, scheduler=scheduler, epoch=0, arch=args.arch,
                    dataset=args.dataset or "mnist5k", quantized_top1=summary.get("top1"), **run_dir.trained_on)
    log.info("Quantized model (FP32 weights and quantization settings) saved to %s", run_dir.file(name))
    return name


def _make_scheduler(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                    example: torch.Tensor, text: Optional[str]) -> Optional[CompressionScheduler]:
    if text is None:
        return None
    label = _schedule_label(args)
    scheduler = schedule_from_text(model, optimizer, text, file=label, example_input=example)
    log.info("Schedule %s: %d policies", label, len(scheduler.policies))
    return scheduler


def _resume(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Optional[CompressionScheduler], device: torch.device, info: Any) -> tuple:
    """Give the model the checkpoint's structure (exits, thinning) and weights; the epoch to start at and the
    best score so far (a fresh start with --reset-optimizer, --evaluate, --sense, the model tools and
    --exp-load-weights-from, which loads the weights and their structure only)."""
    path = args.resume_from or args.exp_load_weights_from
    if not path:
        return 0, None
    state = read_checkpoint(path, verify=not args.skip_checksum)
    weights_only = not args.resume_from
    if state.get("arch") != args.arch and not (weights_only and state.get("arch") is None):
        raise CheckpointError(f"{path}: checkpoint is for --arch {state.get('arch')!r}, not {args.arch!r}")
    check_trained_on(state, info, f"{path}: the checkpoint")
    fresh = bool(args.reset_optimizer or args.evaluate or args.sense or args.activation_histograms is not None
                 or weights_only or args.thinnify or args.export_onnx is not None or args.summary)
    _check_run_state(path, state, fresh)
    if weights_only:  # Distiller's load_lean_checkpoint: no optimizer, schedule state or epoch
        state = {k: v for k, v in state.items() if k not in ("optimizer", "compression_sched")}
    try:
        restored = load_checkpoint(model, state, optimizer=optimizer, scheduler=scheduler,
                                   restore_optimizer=not fresh, strict_schedule=not fresh)
    except OptimizerStateError as err:
        raise CheckpointError(f"{path}: {err}; use --reset-optimizer") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if weights_only:
        log.info("Loaded the weights of %s; training starts at epoch 0", path)
    if args.load_serialized:
        log.info("--load-serialized: the model is not wrapped in DataParallel (it never is here)")
    model.to(device)
    if restored.replayed:
        log.info("Rebuilt %d structure step(s) from the checkpoint", len(restored.replayed))
    if fresh:
        return 0, None
    if "rng_state" in state:
        torch.set_rng_state(state["rng_state"])
    log.info("Resumed from %s at epoch %d", args.resume_from, state["epoch"] + 1)
    return state["epoch"] + 1, state.get("best_top1")


def _check_quantizer(quantizer: Any, model: nn.Module) -> None:
    """Post-training quantization of a model that carries quantization of its own (a checkpoint trained with
    quantization-aware training) is refused before the run directory exists, saying what to do instead."""
    qset = quantization_of(unwrap(model))
    if quantizer is not None and qset is not None:
        raise ConfigError(f"--quantize-eval: the model is quantized already (its quantization {qset.instance_name!r}, "
                          "of quantization-aware training, came with the checkpoint): evaluate it without "
                          "--quantize-eval (it runs quantized), and give --ee-export onnx for its int8 export")


def _check_run_state(path: str, state: Dict[str, Any], fresh: bool) -> None:
    """The app's own checkpoint keys: ``epoch``, ``rng_state`` and ``best_top1`` of the right types."""
    epoch = state.get("epoch")
    if not fresh and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        got = "none" if epoch is None else f"{type(epoch).__name__} {epoch!r}"
        raise CheckpointError(f"{path}: malformed checkpoint: 'epoch' must be a whole number >= 0 to resume "
                              f"from, got {got} (--reset-optimizer starts from its weights at epoch 0)")
    rng = state.get("rng_state")
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise CheckpointError(f"{path}: malformed checkpoint: 'rng_state' must be a byte tensor, got "
                              f"{getattr(rng, 'dtype', type(rng).__name__)}")
    best = state.get("best_top1")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise CheckpointError(f"{path}: malformed checkpoint: 'best_top1' must be a number, got {best!r}")


def _check_exit_flags(args: argparse.Namespace, model: nn.Module, exits: Optional[EarlyExits]) -> None:
    """Flags that need exits, refused before the first epoch when neither schedule nor checkpoint has any, and
    flags the exits' criterion does not take."""
    problems = export_problems(model) if args.ee_export else []
    if problems:
        raise ConfigError(f"--ee-export does not export {problems[0]}")
    if exits is None:
        for flag, given in (("--ee-calibrate", args.ee_calibrate), ("--ee-export", args.ee_export)):
            if given:
                raise ConfigError(f"{flag} needs early exits (in the --compress schedule or the checkpoint)")
        return
    if exits.exit_set.learned_policy and args.ee_calibrate is not None:
        raise ConfigError("--ee-calibrate does not apply to a learned exit policy: its trade-off "
                          "(learned_policy.tradeoff in the schedule) sets where it works")
    learned = exits.exit_set.learned_decisions
    if learned and args.ee_temperature:
        raise ConfigError(f"--ee-temperature would change the logits the {learned[0]} deciders read")
    if args.ee_export == "onnx":
        try:
            check_exportable(exits.exit_set.criterion_objects(), exits.exit_names)
        except DistillEEError as err:
            raise ConfigError(f"--ee-export onnx: {err}") from None


def _check_budget(args: argparse.Namespace, exits: Optional[EarlyExits],
                  scheduler: Optional[CompressionScheduler]) -> None:
    """A ``macs=``/``budget=`` target below the cost of leaving at the first exit can never be met: refused now,
    not after training (unless thinning will change the costs during the run)."""
    if exits is None or args.ee_calibrate is None or (scheduler is not None and scheduler.find("extension")):
        return
    target = parse_target(args.ee_calibrate)
    if target.kind not in ("macs", "budget"):
        return
    costs = exit_costs(exits.multi_exit_model(), exits.model)
    cheapest = costs.macs_per_exit[0] / costs.full_macs
    if target.value < cheapest - 1e-9:
        raise ConfigError(f"--ee-calibrate {args.ee_calibrate}: even every sample leaving at the first exit costs "
                          f"{100 * cheapest:.1f}% of the backbone's MACs")


def _process_loaders(args: argparse.Namespace, splits: Any, loaders: tuple) -> Tuple[Any, Optional[Any], int]:
    """This process's train and validation loaders, and the seed of the epoch orders: the whole splits in a
    single process; under torch.distributed each process's share, in the orders a single process would use."""
    seed = args.seed if args.seed is not None else (0 if args.deterministic else None)
    if not distributed.is_distributed():
        train, valid = loaders[0], loaders[1]
    else:
        if seed is None:  # every process must deal out the same order
            seed = distributed.broadcast_object(random.SystemRandom().randrange(2 ** 31))
        train, valid = shard_loaders(splits, args.batch_size, args.workers, seed=seed, rank=distributed.rank(),
                                     world_size=distributed.world_size(), deterministic=args.deterministic)
    train = train_portion(train, args.effective_train_size)
    portions = (args.effective_train_size, args.effective_valid_size, args.effective_test_size)
    log.log(logging.INFO if min(portions) < 1 else logging.DEBUG,
            "Dataset sizes: training=%d per epoch (of %d) validation=%d test=%d", loader_samples(train),
            len(splits.train), len(splits.valid) if splits.valid is not None else 0, len(splits.test))
    return train, valid, seed


def _log_level(args: argparse.Namespace) -> int:
    """DEBUG with -v/--verbose, else INFO."""
    return logging.DEBUG if args.verbose else logging.INFO


def _train(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Optional[CompressionScheduler], criterion: nn.Module, loaders: tuple,
           device: torch.device, run_dir: Optional[RunDir], start_epoch: int,
           best: Optional[float], tracker: Optional[Tracker] = None) -> Optional[float]:
    """Train from ``start_epoch``; on rank 0 (or alone) log, write metrics.csv and checkpoints each epoch (and
    to the trackers, with the exits' shares and expected MACs on the validation split)."""
    train_loader, valid_loader, seed = loaders
    net = distributed.wrap(model, scheduler)  # DDP under torchrun, the model itself otherwise
    extras = EpochLogs(args, model, scheduler.masks if scheduler else None, run_dir)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        _reseed_order(train_loader, seed, epoch)
        if scheduler:
            scheduler.on_epoch_begin(epoch, optimizer)
        with extras.phase("train"):
            train = train_one_epoch(net, train_loader, criterion, optimizer, scheduler, epoch, device,
                                    print_freq=args.print_freq)
        with extras.phase("valid"):
            valid = evaluate(model, valid_loader, criterion, device, desc=f"Epoch {epoch} valid",
                             print_freq=args.print_freq, across_ranks=distributed.is_distributed()) \
                if valid_loader is not None else {}
        if scheduler:
            scheduler.on_epoch_end(epoch, optimizer, metrics={"min": valid.get("loss", train["loss"]),
                                                              "max": valid.get("top1", train["top1"])})
        check_finite_weights(model, epoch, optimizer.param_groups[0]["lr"])
        row = _epoch_row(epoch, optimizer, model, scheduler, train, valid, time.perf_counter() - started)
        if tracker is not None:
            shares = exit_scalars(EarlyExits.of(model), valid_loader, scheduler.masks if scheduler else None)
            row.update({f"valid_{k}": v for k, v in shares.items()})
        score = valid.get("top1", train["top1"])
        is_best = best is None or score > best
        best = score if is_best else best
        if run_dir is not None:
            run_dir.append_metrics(row)
            _save(run_dir, args, epoch, model, optimizer, scheduler, best, is_best)
            log_epoch(tracker, row)
        exits = "".join(f" | {k[len('train_'):-len('_top1')]} train top1 {v:.2f}" for k, v in row.items()
                        if k.startswith("train_") and k.endswith("_top1") and k != "train_top1")
        exits += "".join(f" | {k[len('train_'):-len('_executed')]} blocks run {100 * v:.1f}%" for k, v in row.items()
                         if k.startswith("train_") and k.endswith("_executed"))
        log.info("Epoch %d: train loss %.4f top1 %.2f | valid loss %.4f top1 %.2f%s | sparsity %.2f%% | %.1fs",
                 epoch, train["loss"], train["top1"], valid.get("loss", float("nan")),
                 valid.get("top1", float("nan")), exits, row["sparsity"], row["seconds"])
        extras.end_epoch(epoch, score, valid.get("top5"))
    return best


def _reseed_order(loader: Any, seed: Optional[int], epoch: int) -> None:
    """Derive each epoch's shuffling from (seed, epoch), so a resumed run sees the same batches (a
    DistributedSampler derives it from its seed, ``seed * ORDER_STRIDE``, and the epoch)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
        return
    generator = getattr(loader, "generator", None)
    if seed is not None and generator is not None:
        generator.manual_seed(seed * ORDER_STRIDE + epoch)


def _calibrate(args: argparse.Namespace, scheduler: Optional[CompressionScheduler], exits: Optional[EarlyExits],
               loaders: tuple, run_dir: RunDir) -> Dict[str, Any]:
    """Choose exit thresholds on the validation split: when asked, or after pruning changed the backbone."""
    if exits is None:
        if args.ee_calibrate:
            raise ConfigError("--ee-calibrate needs early exits (in the schedule or the checkpoint)")
        return {}
    policy: Dict[str, Any] = {}
    if exits.exit_set.learned_policy and not args.evaluate:
        _, valid_loader, test_loader = loaders
        policy = run_learned_policy(exits, valid_loader, test_loader, str(run_dir.path),
                                    masks=scheduler.masks if scheduler else None)
        policy["learned_policy"]["files"] = [Path(f).name for f in policy["learned_policy"]["files"]]
    target = args.ee_calibrate
    pruned = bool(scheduler and (scheduler.find("pruner") or scheduler.find("extension")
                                 or scheduler.find("regularizer")))
    learned = bool(exits.exit_set.learned_decisions)  # their deciders are trained for 0.5
    quantized = is_quantized(exits.model)
    if target is None and (pruned or quantized) and not learned and not args.ee_no_recalibrate and \
            (quantized or not args.evaluate):
        target = AUTO_RECALIBRATION
        log.info("%s changed the backbone: recalibrating exit thresholds on the validation split (%s)",
                 "Quantization" if quantized else "Pruning", target)
    if target is None:
        return policy
    _, valid_loader, test_loader = loaders
    try:
        guarantee = None
        if args.ee_confidence is not None and args.ee_calibrate is not None:
            guarantee = Guarantee(args.ee_confidence, args.ee_consistency or "risk", seed=args.seed or 0)
        out = run_calibration(exits, valid_loader, test_loader, target, str(run_dir.path),
                              masks=scheduler.masks if scheduler else None, temperature=args.ee_temperature,
                              guarantee=guarantee, latency=(args.ee_latency_runtime, args.ee_latency_batch))
    except ConfigError as exc:
        if args.ee_calibrate is not None:
            raise
        log.warning("Exit thresholds kept as scheduled: automatic recalibration is not possible (%s)", exc)
        return {}
    cal = out["calibration"]
    cal["automatic"] = args.ee_calibrate is None
    cal["files"] = [Path(f).name for f in cal.get("files", [])]
    if args.deterministic:  # keep summary.json identical across runs: wall-clock figures go elsewhere
        run_dir.write_json("calibration_timing.json", {"seconds": cal.pop("seconds", None)})
    return {**policy, **out}


def _threshold_target(args: argparse.Namespace) -> str:
    """The target the run's thresholds were chosen for (drop=0.5 when none, or when it needs a time profile)."""
    target = args.ee_calibrate or AUTO_RECALIBRATION
    return AUTO_RECALIBRATION if target.strip().lower().startswith("latency") else target


def _int8_thresholds(target: str, model: nn.Module, exits: EarlyExits, valid_loader: Any) -> Callable[[Any], Any]:
    """How the int8 export's thresholds are chosen: again on the validation split with its own (int8) logits
    (learned deciders keep theirs: they are trained for their own threshold)."""
    def choose(session: Any) -> Any:
        if exits.exit_set.learned_decisions:
            return session.thresholds
        result = recalibrate_session(session, model, valid_loader, target)
        log.info("  int8 export's thresholds recalibrated for %s on the validation split: top1 %.2f, %.1f%% of "
                 "the MACs", target, result.chosen.top1, 100 * result.chosen.macs_fraction)
        return result.thresholds
    return choose


def _export(fmt: str, model: nn.Module, exits: Optional[EarlyExits], run_dir: RunDir,
            valid_loader: Any = None, target: str = "drop=0.5") -> List[str]:
    """The multi-exit model's stages and branches as ONNX (for ONNX Runtime) or TorchScript, with a manifest."""
    if exits is None:
        raise ConfigError("--ee-export needs early exits (in the schedule or the checkpoint)")
    multi = exits.multi_exit_model().eval()
    qset = quantization_of(unwrap(model))
    with exporting(unwrap(model)):  # the float graph (int8 comes from ONNX Runtime's own kernels)
        if fmt == "onnx":
            paths = export_onnx(multi, unwrap(model), run_dir.file("onnx"))
            log.info("Exported %d ONNX files to %s (distill_ee.deploy.MultiExitSession runs them)", len(paths),
                     run_dir.file("onnx"))
            if qset is not None and valid_loader is not None:
                images = torch.cat([x for x, _ in valid_loader])[:256].cpu().numpy()
                log.info("Quantizing the export to int8 in %s (ONNX Runtime QDQ, calibrated on %d validation "
                         "images)", run_dir.file("onnx_int8"), images.shape[0])
                paths += quantize_export(run_dir.file("onnx"), run_dir.file("onnx_int8"), images,
                                         per_channel=qset.settings[qset.layers[0]].per_channel_wts,
                                         thresholds=_int8_thresholds(target, model, exits, valid_loader))
        else:
            paths = export_torchscript(multi, run_dir.file("torchscript"))
            log.info("Exported %d TorchScript files to %s (float: the quantization is simulated)" if qset else
                     "Exported %d TorchScript files to %s", len(paths), run_dir.file("torchscript"))
    return [str(p.relative_to(run_dir.path)) for p in paths]


def _sensitivity(args: argparse.Namespace, model: nn.Module, loaders: tuple, criterion: nn.Module,
                 device: torch.device, run_dir: RunDir) -> int:
    """Distiller's sensitivity analysis on the validation split (the test split when there is none)."""
    _, valid_loader, test_loader = loaders
    loader = valid_loader if valid_loader is not None else test_loader
    sparsities = sensitivity_levels(*args.sense_range)
    params = [n for n, p in backbone_parameters(model) if p.dim() in (2, 4)]

    def test_func(m: nn.Module) -> tuple:
        r = evaluate(m, loader, criterion, device, desc="sensitivity", print_freq=10 ** 9)
        return r["top1"], r["top5"], r["loss"]

    csv_path, png_path = run_sensitivity(model, params, sparsities, args.sense, test_func, run_dir.path)
    log.info("Sensitivity analysis (%s) written to %s and %s", args.sense, csv_path, png_path)
    return 0


def _epoch_row(epoch: int, optimizer: torch.optim.Optimizer, model: nn.Module,
               scheduler: Optional[CompressionScheduler], train: Dict[str, float], valid: Dict[str, float],
               seconds: float) -> Dict[str, Any]:
    row: Dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    row.update({f"train_{k}": v for k, v in train.items()})
    row.update({f"valid_{k}": v for k, v in valid.items()})
    row.update({f"train_{k}": v for k, v in policy_scalars(scheduler).items()})
    row["sparsity"] = sparsity_scalar(model, scheduler)
    row["seconds"] = seconds
    return row


def _save(run_dir: RunDir, args: argparse.Namespace, epoch: int, model: nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Optional[CompressionScheduler], best: Optional[float],
          is_best: bool, extra: Optional[Dict[str, Any]] = None) -> None:
    meta = {"epoch": epoch, "arch": args.arch, "dataset": args.dataset or "mnist5k", "best_top1": best,
            **run_dir.trained_on, "rng_state": torch.get_rng_state(), **(extra or {})}
    save_checkpoint(run_dir.file("checkpoint.pth.tar"), model, optimizer=optimizer, scheduler=scheduler, **meta)
    if is_best:
        save_checkpoint(run_dir.file("best.pth.tar"), model, optimizer=optimizer, scheduler=scheduler, **meta)
