"""The sample app's post-training quantization: ``--quantize-eval/--qe`` and the ``--qe-*`` flags, Distiller's way.

The quantizer comes from ``--qe-config-file`` (a YAML holding a ``quantizers:`` section), from a
``PostTrainLinearQuantizer`` in the ``--compress`` schedule, or from the flags. It is built before the first
training step (a bad file or argument is one located line); after training, the activation statistics are read
(``--qe-stats-file``, or the quantizer's ``model_activation_stats``) or collected on the validation split
(``--qe-calibration PORTION``; written to ``quantization_stats.yaml``), the model is quantized (simulated), and
the exits' thresholds are then recalibrated like after pruning.
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import Any, Dict, Optional

import torch
import yaml
from torch import nn

from ..errors import ConfigError, ScheduleError
from ..modules import unwrap
from ..quantization.post_train import PostTrainLinearQuantizer
from ..quantization.quantset import quantizable_layers, quantization_of, stats_problem
from ..quantization.stats import collect_stats, load_stats, save_stats
from ..schedule import schedule_from_text
from ..schedule.source import parse_yaml, read_yaml_text
from .args import QE_MODES

log = logging.getLogger("distill_ee")
STATS_FILE = "quantization_stats.yaml"


def prepare_quantizer(args: argparse.Namespace, model: nn.Module, scheduler: Any,
                      example: torch.Tensor) -> Optional[PostTrainLinearQuantizer]:
    """The post-training quantizer of this run (None without --qe or a schedule's quantizer), its statistics
    file read and checked against the model's layers now, before training."""
    quantizer = _choose_quantizer(args, model, scheduler, example)
    if quantizer is None:
        return None
    _check_layer_flags(args, model)
    path = args.qe_stats_file or quantizer.model_activation_stats
    if path and args.qe_calibration is None:
        stats = load_stats(path)
        layers = [n for n, _ in quantizable_layers(unwrap(model))]
        problem = stats_problem(stats, layers, {n: quantizer.settings_for(n) for n in layers})
        if problem:
            raise ConfigError(f"{path}: {problem} (the file must come from this model, exits included); collect "
                              "them with --qe-calibration")
        quantizer.stats = stats
    elif args.valid_size == 0:
        raise ConfigError("post-training quantization collects its activation statistics on the validation split, "
                          "and --vs 0 leaves none; give --qe-stats-file")
    return quantizer


def _choose_quantizer(args: argparse.Namespace, model: nn.Module, scheduler: Any,
                      example: torch.Tensor) -> Optional[PostTrainLinearQuantizer]:
    """From the schedule, --qe-config-file or the flags."""
    in_schedule = [c for c in (scheduler.components.get("quantizers", {}).values() if scheduler else [])
                   if isinstance(c, PostTrainLinearQuantizer)]
    if in_schedule:
        if args.qe_config_file:
            raise ConfigError("the --compress schedule has a PostTrainLinearQuantizer already; drop --qe-config-file")
        return in_schedule[0]
    if not args.quantize_eval:
        return None
    if args.qe_config_file:
        text = read_yaml_text(args.qe_config_file, "quantization config")
        return _from_text(text, model, example, args.qe_config_file)
    return _from_text(yaml.safe_dump({"quantizers": {"qe": _flag_config(args)}}), model, example, "<--qe flags>")


def _flag_config(args: argparse.Namespace) -> Dict[str, Any]:
    mode = QE_MODES[args.qe_mode or "sym"]
    config: Dict[str, Any] = {"class": "PostTrainLinearQuantizer", "bits_activations": args.qe_bits_acts or 8,
                              "bits_parameters": args.qe_bits_wts or 8, "bits_accum": args.qe_bits_accum or 32,
                              "mode": {"activations": QE_MODES[args.qe_mode_acts] if args.qe_mode_acts else mode,
                                       "weights": QE_MODES[args.qe_mode_wts] if args.qe_mode_wts else mode},
                              "per_channel_wts": bool(args.qe_per_channel),
                              "clip_acts": (args.qe_clip_acts or "none").upper()}
    if args.qe_dynamic:
        config["dynamic_acts"] = True
    if args.qe_clip_n_stds is not None:
        config["clip_n_stds"] = args.qe_clip_n_stds
    overrides: Dict[str, Dict[str, Any]] = {}
    for name in args.qe_no_quant_layers or []:
        overrides[name] = {"bits_activations": None, "bits_weights": None}
    for name in getattr(args, "qe_no_clip_layers", None) or []:  # Distiller's {clip_acts: NONE} override
        overrides.setdefault(name, {})["clip_acts"] = "NONE"
    if overrides:
        config["overrides"] = overrides
    if getattr(args, "qe_scale_approx_bits", None) is not None:
        config["scale_approx_mult_bits"] = args.qe_scale_approx_bits
    if getattr(args, "qe_save_fp_weights", False):
        config["save_fp_weights"] = True
    return config


def _check_layer_flags(args: argparse.Namespace, model: nn.Module) -> None:
    """Each name of --qe-no-clip-layers names (or, as a regular expression, matches) a quantized layer."""
    layers = [n for n, _ in quantizable_layers(unwrap(model))]
    for name in getattr(args, "qe_no_clip_layers", None) or []:
        try:
            found = any(re.fullmatch(name, layer) for layer in layers)
        except re.error as err:
            raise ConfigError(f"--qe-no-clip-layers {name!r} is not a layer name or regular expression ({err})") \
                from None
        if not found:
            shown = ", ".join(layers[:8]) + (", ..." if len(layers) > 8 else "")
            raise ConfigError(f"--qe-no-clip-layers {name!r}: no convolution or linear layer of the model has that "
                              f"name (its layers: {shown})")


def _from_text(text: str, model: nn.Module, example: torch.Tensor, file: str) -> PostTrainLinearQuantizer:
    source = parse_yaml(text, file, "quantization config")
    other = [k for k in source.data if k not in ("quantizers", "version")]
    if other:
        raise source.error([other[0]], f"a quantization config holds only a quantizers: section, not {other[0]!r}")
    built = schedule_from_text(unwrap(model), None, text, example_input=example, file=file)
    found = [c for c in built.components.get("quantizers", {}).values() if isinstance(c, PostTrainLinearQuantizer)]
    if len(found) != 1:
        raise ScheduleError(f"a quantization config needs exactly one PostTrainLinearQuantizer, found {len(found)}",
                            file=file, path="quantizers")
    return found[0]


def quantize_trained(args: argparse.Namespace, quantizer: PostTrainLinearQuantizer, model: nn.Module,
                     valid_loader: Any, run_dir: Any) -> Dict[str, Any]:
    """Statistics read or collected, the model quantized (simulated); the ``quantization`` part of summary.json."""
    stats = getattr(quantizer, "stats", None)
    if stats is not None:  # read and checked before training
        source = str(args.qe_stats_file or quantizer.model_activation_stats)
    else:
        if valid_loader is None:
            raise ConfigError("collecting activation statistics needs a validation split (--vs above 0), or give "
                              "--qe-stats-file")
        images = torch.cat([x for x, _ in valid_loader])
        portion = args.qe_calibration or 1.0
        images = images[:max(1, int(round(portion * images.shape[0])))]
        device = next(unwrap(model).parameters()).device
        stats = collect_stats(unwrap(model), [b.to(device) for b in torch.split(images, 256)])
        path = run_dir.file(STATS_FILE)
        save_stats(path, stats)
        source = f"collected on {images.shape[0]} validation images ({STATS_FILE})"
    qset = quantizer.quantize(unwrap(model), stats)
    log.info("Post-training quantization (simulated): %d layers; activation statistics %s", len(qset.layers),
             source)
    return {"quantization": {"layers": len(qset.layers), "statistics": source,
                             "defaults": quantizer.defaults.to_config(),
                             "overrides": {k: v.to_config() for k, v in quantizer.overrides.items()}}}


def is_quantized(model: nn.Module) -> bool:
    """Whether the model carries simulated quantization."""
    return quantization_of(unwrap(model)) is not None
