"""Rows of a model with exits deployed on ONNX Runtime, in float and in int8, with real early exit.

The checkpoint's multi-exit form is exported to ONNX (``distill_ee.early_exit.onnx_export.export_onnx``) and
quantized to int8 QDQ by ONNX Runtime (``distill_ee.deploy.quantize.quantize_export``, calibrated on 256
validation images), as ``--ee-export onnx`` does for a quantized model. Each export's thresholds are chosen
for ``drop=0.5`` on the validation split with its own logits (``recalibrate_session``: the int8 ones for the
int8 export). Figures on the whole test split: top-1 of real early exit on the session, expected MACs as a
share of the **dense** reference backbone (the unpruned network trained alone), and, when timed, seconds per
sample at batch 1 and 256 against that reference in eager PyTorch fp32 (``backbone``), the session's real
early exit (``real``) and its own oracle bound (``oracle``: the share leaving at each exit times the session's
measured time to reach it). ONNX Runtime runs on one thread at batch 1 and on as many as PyTorch at 256, as in
``benchmarks/deploy_speed.py``.
"""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import SPEED_RUNS, load_model, load_splits

TARGET = "drop=0.5"
CALIBRATION_IMAGES = 256
BATCH = 256


@dataclass
class Export:
    """One ONNX export on ONNX Runtime: a one-thread session (batch 1) and one on torch's threads (batch 256),
    with the thresholds chosen on validation, and its figures on the test split."""

    label: str
    single: Any
    batched: Any
    valid: Any  # the calibration's chosen point on validation
    figures: Optional[Dict[str, Any]] = None


def int8_rows(arch: str, checkpoint: Path, data: Optional[str], timing: bool, reference: torch.nn.Module,
              method: str) -> List[Tuple[str, Dict[str, Any]]]:
    """The rows ``{method}, ONNX Runtime fp32|int8, <criterion> drop=0.5`` of ``checkpoint`` (a model with exits)."""
    from distill_ee.apputils.datasets import make_loaders
    from distill_ee.early_exit.calibrate import exit_costs
    from distill_ee.summaries import total_macs

    splits = load_splits(data)
    _, valid, test = make_loaders(splits, BATCH)
    model, multi = load_exits(arch, checkpoint, splits.info)
    x, y = torch.cat([b for b, _ in test]), torch.cat([t for _, t in test])
    costs = exit_costs(multi, model)
    dense = float(total_macs(reference.eval(), torch.zeros(1, *splits.info.input_shape))[0])
    with tempfile.TemporaryDirectory() as tmp:  # the sessions load the backbone's file lazily: used inside
        exports = make_exports(model, multi, valid, Path(tmp))
        torch_logits = torch_exit_logits(multi, test)
        for e in exports:
            e.figures = test_figures(e.batched, x, y, costs, dense)
        check_against_torch(exports, torch_logits, y, costs)
        if timing:
            for label, speed in time_exports(reference.eval(), exports, x).items():
                next(e for e in exports if e.label == label).figures["speed"] = speed
    criterion = "/".join(sorted(set(exports[0].batched.criteria)))
    return [(f"{method}, ONNX Runtime {e.label}, {criterion} {TARGET}", finish(e, dense)) for e in exports]


def load_exits(arch: str, checkpoint: Path, info: Any) -> Tuple[torch.nn.Module, Any]:
    """The checkpoint in a fresh ``arch`` model (its exits and thinning rebuilt) and its multi-exit form."""
    import distill_ee

    model = load_model(arch, checkpoint, info)
    exits = distill_ee.EarlyExits.of(model)
    if exits is None:
        raise ValueError(f"{checkpoint}: the model has no early exits to deploy")
    return model, exits.multi_exit_model().eval()


def make_exports(model: torch.nn.Module, multi: Any, valid: Any, folder: Path) -> List[Export]:
    """The float export and its int8 quantization in ``folder``, each with thresholds chosen on validation."""
    from distill_ee.apputils.calibration import recalibrate_session
    from distill_ee.deploy import MultiExitSession
    from distill_ee.deploy.quantize import quantize_export
    from distill_ee.early_exit.onnx_export import export_onnx

    export_onnx(multi, model, folder / "fp32")
    chosen: Dict[str, Any] = {}

    def choose(session: Any) -> Any:  # the int8 files' thresholds, from their own logits
        chosen["int8"] = recalibrate_session(session, model, valid, TARGET)
        return chosen["int8"].thresholds

    calibration = torch.cat([b for b, _ in valid])[:CALIBRATION_IMAGES].numpy()
    quantize_export(folder / "fp32", folder / "int8", calibration, thresholds=choose)
    exports = []
    for label in ("fp32", "int8"):
        single = MultiExitSession(folder / label, threads=1)
        batched = MultiExitSession(folder / label, threads=torch.get_num_threads())
        if label == "fp32":
            chosen[label] = recalibrate_session(batched, model, valid, TARGET)
        for session in (single, batched):
            session.set_thresholds(chosen[label].thresholds)
        exports.append(Export(label, single, batched, chosen[label].chosen))
    return exports


def torch_exit_logits(multi: Any, loader: Any) -> List[torch.Tensor]:
    """Every exit's logits in PyTorch (the app's evaluation) on ``loader``."""
    from distill_ee.early_exit.stats import collect_exit_logits
    from distill_ee.modules import eval_mode

    with eval_mode(multi), torch.no_grad():
        return collect_exit_logits(multi, loader)[0]


def session_logits(session: Any, x: torch.Tensor) -> Tuple[List[torch.Tensor], np.ndarray, torch.Tensor, np.ndarray]:
    """(every exit's logits, the exits the session decides from every exit's scores, the real early exit's
    logits and exit index) of ``session`` on ``x``, by batches."""
    parts, decided, real, index = [], [], [], []
    for b in torch.split(x, BATCH):
        logits, scores = session.simulate_scores(b.numpy())
        parts.append(logits)
        decided.append(session.decide(scores))
        z, i = session(b.numpy())
        real.append(torch.from_numpy(z))
        index.append(i)
    every = [torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(len(parts[0]))]
    return every, np.concatenate(decided), torch.cat(real), np.concatenate(index)


def test_figures(session: Any, x: torch.Tensor, y: torch.Tensor, costs: Any, dense: float) -> Dict[str, Any]:
    """Top-1 of real early exit on the session, expected MACs (of its own backbone and of ``dense``), and
    whether real early exit took the exits its logits decide."""
    from distill_ee.early_exit.tradeoff import measure_point

    every, decided, real, index = session_logits(session, x)
    point = measure_point(every, y, session.criteria, session.thresholds, costs)
    return {"top1": 100.0 * float((real.argmax(1) == y).double().mean()), "simulated_top1": point.top1,
            "macs_pct": 100.0 * point.expected_macs / dense, "macs_pct_own": 100.0 * point.macs_fraction,
            "taken_pct": point.taken_pct, "thresholds": list(session.thresholds),
            "final_top1": 100.0 * float((every[-1].argmax(1) == y).double().mean()),
            "test_images": int(y.numel()), "real_same_exit_pct": 100.0 * float((decided == index).mean()),
            "_logits": every}


def check_against_torch(exports: Sequence[Export], torch_logits: List[torch.Tensor], y: torch.Tensor,
                        costs: Any) -> None:
    """Each export's logits against PyTorch's (largest difference, same prediction), and the app's top-1 at the
    export's thresholds on PyTorch's logits (the float export should match it)."""
    from distill_ee.early_exit.tradeoff import measure_point

    for e in exports:
        ort = e.figures.pop("_logits")
        e.figures["max_logit_diff_vs_torch"] = max(float((o - t).abs().max()) for o, t in zip(ort, torch_logits))
        e.figures["same_prediction_vs_torch_pct"] = [100.0 * float((o.argmax(1) == t.argmax(1)).double().mean())
                                                     for o, t in zip(ort, torch_logits)]
        crits = e.batched.criteria
        e.figures["torch_fp32_top1_same_thresholds"] = measure_point(torch_logits, y, crits, e.batched.thresholds,
                                                                costs).top1


def time_exports(reference: torch.nn.Module, exports: Sequence[Export], x: torch.Tensor
                 ) -> Dict[str, Dict[str, Any]]:
    """``{label: {"1": ..., "256": ...}}``: seconds per sample of the dense reference (eager PyTorch fp32), of each
    session's real early exit and oracle bound, and of the sessions' own backbones, timed together."""
    out: Dict[str, Dict[str, Any]] = {e.label: {} for e in exports}
    for batch, n, rounds in SPEED_RUNS:
        for label, figures in time_batch(reference, exports, x[:n], batch, rounds).items():
            out[label][str(batch)] = figures
    return out


def time_batch(reference: torch.nn.Module, exports: Sequence[Export], x: torch.Tensor, batch: int,
               rounds: int) -> Dict[str, Dict[str, Any]]:
    """One batch size: every candidate in interleaved rounds (best round each), per export's figures."""
    from distill_ee.apputils.timing import oracle_bound
    from distill_ee.timing import interleaved_rounds

    batches = list(torch.split(x, batch))
    arrays = [b.numpy() for b in batches]
    sessions = {e.label: e.single if batch == 1 else e.batched for e in exports}
    candidates: Dict[str, Callable[[], Any]] = {"backbone": lambda: [reference(b) for b in batches]}
    for label, s in sessions.items():
        candidates[f"{label}_backbone"] = lambda s=s: [s.backbone(a) for a in arrays]
        candidates[f"{label}_real"] = lambda s=s: [s(a) for a in arrays]
        for k in range(s.manifest.num_exits + 1):
            candidates[f"{label}_prefix{k}"] = lambda s=s, k=k: [s.run_prefix(a, k) for a in arrays]
    times = interleaved_rounds(candidates, rounds, context=torch.inference_mode)
    best = {name: min(t) / x.shape[0] for name, t in times.items()}
    out = {}
    for label, s in sessions.items():
        fractions = exit_fractions(s, arrays)
        prefixes = [best[f"{label}_prefix{k}"] for k in range(s.manifest.num_exits + 1)]
        out[label] = {"batch_size": batch, "backbone": best["backbone"], "real": best[f"{label}_real"],
                      "oracle": oracle_bound(fractions, prefixes), "ort_backbone": best[f"{label}_backbone"],
                      "ort_fp32_backbone": best["fp32_backbone"], "fractions": fractions,
                      "spread": max(statistics.median(times[c]) / min(times[c]) - 1
                                    for c in ("backbone", f"{label}_real"))}
    return out


def exit_fractions(session: Any, arrays: Sequence[np.ndarray]) -> List[float]:
    """Share of samples (0..1) leaving at each exit, final last, in the session's real early exit."""
    counts = np.zeros(session.manifest.num_exits + 1)
    for a in arrays:
        counts += np.bincount(session(a)[1], minlength=counts.size)
    return (counts / counts.sum()).tolist()


def finish(e: Export, dense: float) -> Dict[str, Any]:
    """The row's figures: validation's choice and the note (speedup over the session's own ORT fp32 backbone)."""
    f = e.figures
    f["valid"] = {"top1": e.valid.top1, "macs_pct_own": 100.0 * e.valid.macs_fraction,
                  "macs_pct": 100.0 * e.valid.expected_macs / dense}
    notes = [f"{f['macs_pct_own']:.1f}% of its own backbone's MACs"] if abs(f["macs_pct_own"] - f["macs_pct"]) > 0.05 \
        else []
    if "speed" in f:
        s = f["speed"]
        notes.append("over its ORT fp32 backbone " + ", ".join(
            f"b{b} {s[b]['ort_fp32_backbone'] / s[b]['real']:.2f}x" for b in ("1", "256")))
    f["note"] = "; ".join(notes)
    return f
