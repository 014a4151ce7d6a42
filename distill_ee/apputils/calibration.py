"""The app's threshold calibration: ``--ee-calibrate TARGET`` parsed, run on validation, reported on test.

``parse_target`` reads the command line's text (``drop=0.5``, ``macs=0.4`` or ``macs=40%``,
``proportions=0.5,0.3``); ``run_calibration`` calibrates a model's exits on the validation split, measures
the test split at the chosen thresholds, writes the trade-off files and returns the ``calibration`` part
of summary.json.
"""
from __future__ import annotations

import logging
import math
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..deploy.profile import LatencyProfile
from ..early_exit.calibrate import (TARGET_KINDS, CalibrationTarget, calibrate, calibrate_exits,
                                    check_target_range, exit_costs, measure_exits, split_figures)
from ..early_exit.criteria import criteria_list
from ..early_exit.latency import latency_costs, profile_torch
from ..early_exit.onnx_export import export_onnx
from ..early_exit.exits import EarlyExits
from ..early_exit.risk import Guarantee, loss_rate, smallest_certifiable
from ..early_exit.stats import collect_exit_logits
from ..modules import eval_mode, unwrap
from ..errors import ConfigError
from ..registry import suggest
from .tradeoff_files import write_tradeoff

log = logging.getLogger("distill_ee")

_EXAMPLES = ("drop=0.5 (top-1 points below the final exit), macs=0.4 (share of the backbone's MACs per sample), "
             "latency=0.4 (share of its measured time), proportions=0.5,0.3 (share of the samples leaving at each "
             "early exit) or budget=0.5 (MSDNet's geometric shares for an average budget)")


def parse_target(text: str) -> CalibrationTarget:
    """A CalibrationTarget from ``drop=0.5``, ``macs=0.4`` / ``macs=40%``, ``proportions=0.5,0.3`` or
    ``budget=0.5`` / ``budget=50%``."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"calibration target {text!r}: expected KIND=VALUE, e.g. {_EXAMPLES}")
    kind, _, raw = text.partition("=")
    kind, raw = kind.strip().lower(), raw.strip()
    if kind not in TARGET_KINDS:
        close = suggest(kind, TARGET_KINDS)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"calibration target {text!r}: unknown kind {kind!r}{hint} "
                          f"(valid: {', '.join(TARGET_KINDS)})")
    values = tuple(_target_number(part, kind, text) for part in raw.split(","))
    if kind != "proportions" and len(values) != 1:
        raise ConfigError(f"calibration target {text!r}: {kind} takes one number, e.g. {kind}=0.5")
    check_target_range(kind, values, text)
    return CalibrationTarget(kind, values)


def _target_number(part: str, kind: str, text: str) -> float:
    part = part.strip()
    scale = 1.0
    if kind in ("macs", "budget", "latency") and part.endswith("%"):
        part, scale = part[:-1].strip(), 0.01
    try:
        value = float(part) * scale
    except ValueError:
        raise ConfigError(f"calibration target {text!r}: {part!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"calibration target {text!r}: {part!r} is not a finite number")
    return value


def run_calibration(exits: EarlyExits, valid_loader: Any, test_loader: Any, target_text: str, out_dir: str, *,
                    masks: Optional[Mapping[str, Any]] = None, temperature: bool = False,
                    guarantee: Optional[Guarantee] = None, latency: Tuple[str, int] = ("torch", 1)
                    ) -> Dict[str, Any]:
    """Calibrate on validation, measure test at the chosen thresholds, write the trade-off files; returns the
    ``{"calibration": ...}`` part of summary.json. With a ``guarantee``, the choice is certified for new data
    and the certificate is reported next to the loss rates realised on validation and test."""
    if valid_loader is None:
        raise ConfigError("threshold calibration needs a validation split (it never looks at the test split); "
                          "set a validation size above 0")
    target = parse_target(target_text)
    dataset = getattr(valid_loader, "dataset", None)
    if guarantee is None and hasattr(dataset, "__len__"):
        warn_small_split(target, len(dataset))
    profile = measure_latency(exits, valid_loader, *latency) if target.kind == "latency" else None
    costs = latency_costs(profile) if profile is not None else None
    result = calibrate_exits(exits, valid_loader, target, masks=masks, temperature=temperature,
                             guarantee=guarantee, costs=costs)
    names = list(exits.output_names)
    cost = "time" if profile is not None else "MACs"
    test_point, test_final = measure_exits(exits, test_loader, masks, costs=costs)
    files = write_tradeoff(result.front, result.chosen, out_dir, final=result.final_point, exit_names=names,
                           guides=target.guides(result.final_top1), certified=result.certified_points)
    snippet = result.yaml_snippet(exits.exit_names)
    if profile is not None:
        snippet = snippet.replace("of the backbone's MACs", f"of the backbone's time ({profile.runtime})")
    valid = split_figures(result.chosen, result.final_top1, names)
    test = split_figures(test_point, test_final, names)
    log.info("Calibrated exit thresholds for %s (%s): %d settings searched in %.2f s", target.text,
             target.describe(), result.settings_searched, result.seconds)
    for split, fig in (("validation", valid), ("test", test)):
        log.info("  %-10s top1 %.2f (final exit %.2f, drop %.2f points), %s %.1f%% of the backbone, "
                 "samples per exit: %s", split, fig["top1"], fig["final_top1"], fig["drop"], cost,
                 100 * fig["macs_fraction"], ", ".join(f"{k} {v:.1f}%" for k, v in fig["taken_pct"].items()))
    log.info("Schedule lines for these thresholds:\n%s", snippet)
    out = {"target": target.text, "criteria": result.criteria, "thresholds": result.thresholds,
           "temperatures": result.temperatures, "valid": valid, "test": test, "yaml": snippet,
           "settings_searched": result.settings_searched, "seconds": result.seconds, "files": files}
    if profile is not None:
        out["latency"] = _latency_report(profile, test_point, names)
    if target.kind == "budget":  # MSDNet's rule next to the project's own search at the same budget
        out["same_budget_macs_search"] = _macs_search(exits, valid_loader, test_loader, target.value, masks, names)
    if result.certificate is not None:
        out["guarantee"] = _guarantee_report(exits, result, valid_loader, test_loader)
        log.info("Guarantee: %s", result.certificate.message)
        log.info("  realised loss rate (%s consistency): validation %.2f, test %.2f points",
                 result.certificate.consistency, out["guarantee"]["valid_loss_pct"], out["guarantee"]["test_loss_pct"])
    return {"calibration": out}


def small_split_warning(target: CalibrationTarget, samples: int) -> Optional[str]:
    """The warning a plain ``drop=`` calibration on ``samples`` validation images deserves, or None: when even a
    setting that lost nothing could not be certified for that drop by Learn-then-Test at the default confidence,
    the split is too small to support the target (the plain choice may drop more on new data)."""
    if target.kind != "drop":
        return None
    default = Guarantee()
    test_part = samples - int(samples * default.search_share)
    smallest = 100.0 * smallest_certifiable(test_part, default.delta)
    if target.value >= smallest:
        return None
    return (f"the validation split ({samples:,} images) is too small to support {target.text}: Learn-then-Test at "
            f"confidence {default.confidence:g} could certify no drop below {smallest:.2f} points on it, so the "
            f"thresholds chosen may drop more on new data; give --ee-calibrate {target.text} --ee-confidence "
            f"{default.confidence:g} for a certified choice, a larger validation split (--vs), or a target of at "
            f"least drop={smallest:.2f}")


def warn_small_split(target: CalibrationTarget, samples: int) -> None:
    """Log ``small_split_warning``'s warning, if any."""
    message = small_split_warning(target, samples)
    if message:
        log.warning("Calibration: %s", message)


def recalibrate_session(session: Any, model: torch.nn.Module, valid_loader: Any, target_text: str,
                        masks: Optional[Mapping[str, Any]] = None) -> Any:
    """Thresholds for ``target_text`` chosen on the validation split with an export's own logits (an int8 one:
    its decisions, not the float model's), set on the session; the calibration result."""
    target = parse_target(target_text)
    images = torch.cat([x for x, _ in valid_loader]).cpu()
    targets = torch.cat([y for _, y in valid_loader]).cpu()
    logits = [torch.from_numpy(z) for z in session.simulate(images.numpy())]
    exits = EarlyExits.of(model)
    multi = exits.multi_exit_model().eval()
    costs = exit_costs(multi, unwrap(model), masks)
    result = calibrate(logits, targets, criteria_list(session.criteria, len(session.exit_names)),
                       costs.macs_per_exit, costs.full_macs, target, branch_macs=costs.branch_macs)
    session.set_thresholds(result.thresholds)
    return result


def measure_latency(exits: EarlyExits, valid_loader: Any, runtime: str, batch_size: int) -> LatencyProfile:
    """Per stage and branch seconds per sample in ``runtime`` (torch, or onnx on a temporary export), on up to
    256 validation images at ``batch_size``."""
    inputs = torch.cat([x for x, _ in valid_loader])[:256].cpu()
    model = unwrap(exits.model)
    multi = exits.multi_exit_model().eval()
    if runtime == "torch":
        profile = profile_torch(multi, model, inputs, batch_size)
    else:
        from ..deploy import MultiExitSession
        from ..deploy.profile import profile_session
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(multi, model, tmp)
            session = MultiExitSession(tmp, threads=1 if batch_size == 1 else torch.get_num_threads())
            profile = profile_session(session, inputs.numpy(), batch_size)
    log.info("Latency profile (%s, batch %d), microseconds per sample: stages %s; branches %s; backbone %.1f",
             profile.runtime, batch_size, " / ".join(f"{1e6 * t:.1f}" for t in profile.stages),
             " / ".join(f"{1e6 * t:.1f}" for t in profile.branches), 1e6 * profile.backbone)
    return profile


def _latency_report(profile: LatencyProfile, test_point: Any, names: list) -> Dict[str, Any]:
    """The profile and BranchyNet's rule checked at the test split's shares (each failing exit logged)."""
    taken = [p / 100.0 for p in test_point.taken_pct]
    warnings = profile.branch_check(taken, names[:-1])
    for w in warnings:
        log.warning("%s", w)
    return {**profile.to_dict(), "warnings": warnings}


def _macs_search(exits: EarlyExits, valid_loader: Any, test_loader: Any, budget: float,
                 masks: Optional[Mapping[str, Any]], names: list) -> Dict[str, Any]:
    """The ``macs=`` search at ``budget`` on a copy of the thresholds (the budget rule's stay), both splits."""
    kept = list(exits.thresholds)
    try:
        result = calibrate_exits(exits, valid_loader, CalibrationTarget("macs", (budget,)), masks=masks,
                                 temperature=False)
        test_point, test_final = measure_exits(exits, test_loader, masks)
        out = {"thresholds": list(result.thresholds), "valid": split_figures(result.chosen, result.final_top1, names),
               "test": split_figures(test_point, test_final, names)}
    except ConfigError as err:
        out = {"error": str(err)}
    finally:
        exits.set_thresholds(kept)
    for split in ("valid", "test"):
        if split in out:
            fig = out[split]
            log.info("  macs=%g search, %-10s top1 %.2f, MACs %.1f%% of the backbone", budget, split, fig["top1"],
                     100 * fig["macs_fraction"])
    return out


def _guarantee_report(exits: EarlyExits, result: Any, valid_loader: Any, test_loader: Any) -> Dict[str, Any]:
    """The certificate with the loss rates the chosen thresholds realise on validation and on test."""
    report = result.certificate.to_dict()
    multi = exits.multi_exit_model()
    for split, loader in (("valid", valid_loader), ("test", test_loader)):
        with eval_mode(multi):
            logits, targets = collect_exit_logits(multi, loader)
        rate = loss_rate(logits, targets, multi.criteria, exits.thresholds, report["consistency"])
        report[f"{split}_loss_pct"] = 100.0 * rate
    return report
