"""The sample app's final report: test accuracy, sparsity, MACs and per-exit statistics -> summary.json."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, List, Optional

import torch
from tabulate import tabulate
from torch import nn

from ..attachment import attachments, backbone_parameters
from ..early_exit.exits import EarlyExits
from ..modules import eval_mode
from ..early_exit.stats import expected_macs, overall_top1
from ..dynamic import static_compute
from ..routing import Routing
from ..routing.stats import executed_macs
from ..scheduler import CompressionScheduler
from ..summaries import (compute_table, masked_parameters, params_nnz, sparsity_table, total_macs,
                         total_sparsity)
from ..thinning import StructureRemover
from .anytime_files import anytime_rows, write_anytime
from .class_report import class_names, class_rows, class_table
from .routing_report import routing_report
from .run_dir import RunDir
from .timing import compare_speed
from .train import evaluate

log = logging.getLogger("distill_ee")


def thinning_summary(scheduler: Optional[CompressionScheduler]) -> Dict[str, Any]:
    """``{"thinning": {"kept": [...]}}``: the zero structures the run's last thinning kept, each with its reason
    (empty when it kept none)."""
    policies = scheduler.policies if scheduler is not None else []
    kept = [{"thinning": p.name, **k._asdict()} for p in policies if isinstance(p, StructureRemover) for k in p.kept]
    return {"thinning": {"kept": kept}} if kept else {}


def final_report(args: argparse.Namespace, dataset: str, model: nn.Module,
                 scheduler: Optional[CompressionScheduler], loaders: tuple, criterion: nn.Module,
                 device: torch.device, example: torch.Tensor, run_dir: RunDir,
                 exits: Optional[EarlyExits] = None) -> Dict[str, Any]:
    """Evaluate on the test split and assemble the summary (and log the tables)."""
    _, valid_loader, test_loader = loaders
    masks = scheduler.masks if scheduler else None
    example = example.to(device)
    names = class_names(test_loader.dataset)
    test = evaluate(model, test_loader, criterion, device, desc="Test", print_freq=args.print_freq,
                    num_classes=len(names) if names else 0)
    with static_compute(model):  # the backbone's compute: every routed block
        dense, effective = total_macs(model, example, masks)
        log.info("\n%s", compute_table(model, example, masks)[1])
    total, nnz = params_nnz(model, masks)
    log.info("\n%s", sparsity_table(model, masks)[1])
    summary: Dict[str, Any] = {
        "arch": args.arch, "dataset": dataset, "threads": torch.get_num_threads(),
        "top1": test["top1"], "top5": test["top5"], "top1_final_exit": test["top1"],
        "sparsity": total_sparsity(model, masks), "params": total, "params_nnz": nnz,
        **_part_figures(model, masks),
        "macs_dense": dense, "macs_effective": effective, "macs_expected": float(dense),
        "exits": [{"name": "final", "threshold": None, "taken_pct": 100.0, "top1_taken": test["top1"],
                   "top1_if_all_exit_here": test["top1"], "macs": dense}],
    }
    if names:
        summary["classes"] = class_rows(names, test["class_seen"], test["class_correct"])
        log.info("Test top-1 per class (the model's final output):\n%s", class_table(summary["classes"]))
    routing = Routing.of(model)
    if routing is not None:
        summary["routing"] = _routing_summary(args, model, routing, test_loader, device, run_dir)
        if exits is None:
            summary["macs_expected"] = summary["routing"]["macs_expected"]
    summary.update(thinning_summary(scheduler))
    if exits is not None and routing is not None:
        summary["routing"].update(_with_exits(model, exits, test_loader, device, dense))
    if exits is not None:
        summary.update(_exit_summary(exits, test_loader, valid_loader, masks, dense))
        _log_exits(summary["exits"])
        summary["anytime"] = anytime_rows(summary["exits"], dense)
        write_anytime(summary["anytime"], str(run_dir.path))
        if not args.no_timing:
            timing = measure_speed(model, exits, test_loader, device)
            if args.deterministic:  # wall-clock figures would make summary.json differ between runs
                run_dir.write_json("timing.json", timing)
                summary["timing_file"] = "timing.json"
            else:
                summary["timing"] = timing
            log.info("Wall-clock speedup of real early exit over the backbone: %s",
                     ", ".join(f"batch {b}: {v['speedup']:.2f}x ({v['real_vs_oracle']:.2f} of the oracle bound)"
                               for b, v in timing.items()))
            busy = [b for b, v in timing.items() if v["busy"]]
            if busy:
                log.warning("The machine was busy while timing batch %s: the median round was %.0f%% slower than "
                            "the best, so these speedups are not to be trusted (benchmarks/early_exit_speed.py "
                            "measures more carefully)", ", ".join(busy),
                            100 * max(timing[b]["spread"] for b in busy))
    log.info("Test: top1 %.2f (final exit %.2f) top5 %.2f | sparsity %.2f%% | MACs dense %d expected %.0f",
             summary["top1"], summary["top1_final_exit"], summary["top5"], summary["sparsity"],
             summary["macs_dense"], summary["macs_expected"])
    return summary


def _routing_summary(args: argparse.Namespace, model: nn.Module, routing: Routing, test_loader: Any,
                     device: torch.device, run_dir: RunDir) -> Dict[str, Any]:
    """Routing statistics (and timing, kept out of summary.json under --deterministic)."""
    out = routing_report(model, routing, test_loader, device, timing=not args.no_timing)
    if args.deterministic and "timing" in out:
        run_dir.write_json("routing_timing.json", out.pop("timing"))
        out["timing_file"] = "routing_timing.json"
    return out


def _with_exits(model: nn.Module, exits: EarlyExits, test_loader: Any, device: torch.device,
                dense: int) -> Dict[str, Any]:
    """MACs per test sample of real early exit through the routed blocks, counted layer call by layer call (the
    exits' own figures count every block as run)."""
    multi = exits.multi_exit_model().eval()
    macs = executed_macs(multi, model, (x.to(device) for x, _ in test_loader))
    log.info("Early exit and routing together: %.0f MACs per test sample executed (%.1f%% of the backbone's)",
             macs, 100.0 * macs / max(dense, 1))
    return {"macs_with_exits": macs, "macs_with_exits_pct": 100.0 * macs / max(dense, 1)}


def _part_figures(model: nn.Module, masks: Any) -> Dict[str, Any]:
    """Parameters, nonzeros and weight sparsity of the backbone and of each attachment (exit branches, routing,
    quantization ...), separately."""
    values = masked_parameters(model, masks)
    backbone = {name for name, _ in backbone_parameters(model)}
    owner = {id(p): type(a).summary_key for a in attachments(model) for p in a.parameters()}
    named = dict(model.named_parameters())
    parts = [("backbone", [n for n in values if n in backbone])]
    for key in dict.fromkeys(type(a).summary_key for a in attachments(model)):
        parts.append((key, [n for n in values if owner.get(id(named[n])) == key]))
    out: Dict[str, Any] = {}
    for part, names in parts:
        weights = [values[n] for n in names if values[n].dim() > 1 and "weight" in n.rsplit(".", 1)[-1]]
        dense = sum(w.numel() for w in weights)
        nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
        out[f"params_{part}"] = sum(values[n].numel() for n in names)
        out[f"params_nnz_{part}"] = sum(int(torch.count_nonzero(values[n])) for n in names)
        out[f"sparsity_{part}"] = 100.0 * (1.0 - nonzero / dense) if dense else 0.0
    return out


def _exit_summary(exits: EarlyExits, test_loader: Any, valid_loader: Any, masks: Any, dense: int) -> Dict[str, Any]:
    rows = exits.evaluate(test_loader, masks)
    effective_rows = exits.evaluate(test_loader, masks, effective=True)
    for row, eff in zip(rows, effective_rows):
        row["macs_effective"] = eff["macs"]
    out: Dict[str, Any] = {
        "top1": overall_top1(rows),
        "macs_expected": expected_macs(rows),
        "macs_expected_effective": expected_macs(effective_rows),
        "theoretical_speedup": dense / max(expected_macs(rows), 1.0),
        "criteria": list(exits.criteria),
        "exits": rows,
    }
    if valid_loader is not None:
        valid_rows = exits.evaluate(valid_loader, masks)
        out["valid_top1"] = overall_top1(valid_rows)
        out["valid_exits"] = valid_rows
    return out


def _log_exits(rows: List[Dict[str, Any]]) -> None:
    table = [[r["name"], r["threshold"], f"{r['taken_pct']:.2f}",
              "-" if r["top1_taken"] is None else f"{r['top1_taken']:.2f}", f"{r['top1_if_all_exit_here']:.2f}",
              r["macs"], r.get("macs_effective", "")] for r in rows]
    log.info("Early exits on the test split:\n%s", tabulate(
        table, headers=["exit", "threshold", "taken %", "top1 taken", "top1 if all exit here", "MACs",
                        "MACs (sparse)"], tablefmt="psql"))


#: a median round this much slower than the best makes a timing untrustworthy (a busy machine)
BUSY_SPREAD = 0.15


def measure_speed(model: nn.Module, exits: EarlyExits, loader: Any, device: torch.device,
                  batch_sizes: tuple = (256, 1), max_single: int = 300, repeats: int = 5) -> Dict[str, Any]:
    """Backbone vs. real early exit on the test inputs, timed in interleaved rounds, with the oracle bound
    (each exit's measured cost times the share of samples taking it) beside them, per batch size."""
    inputs = torch.cat([x for x, _ in loader]).to(device)
    multi = exits.multi_exit_model().eval()
    out: Dict[str, Any] = {}
    with eval_mode(model):
        for bs in batch_sizes:
            data = inputs[:max_single] if bs == 1 else inputs
            r = compare_speed(model, multi, data, bs, repeats=repeats)
            n = int(data.shape[0])
            out[str(bs)] = {"samples": n, "backbone_s": r["backbone"] * n, "early_exit_s": r["real"] * n,
                            "oracle_s": r["oracle"] * n, "speedup": r["backbone"] / r["real"],
                            "real_vs_oracle": r["oracle"] / r["real"], "spread": r["spread"],
                            "busy": r["spread"] > BUSY_SPREAD}
    return out
