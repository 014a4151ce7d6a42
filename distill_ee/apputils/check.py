"""``distill-ee check SCHEDULE --arch ARCH``: validate a schedule against a model and print the resolved plan.

Nothing is trained. The schedule is built on a fresh model of the architecture, exactly as a run would build
it, and the plan is printed: each policy with the epochs it runs, the parameters each name or pattern
matched, and the exits with the shape they read and the MACs of leaving there. A bad schedule is one
located line on stderr and exit status 2, as everywhere.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from tabulate import tabulate
from torch import nn

from ..context import BuildContext
from ..early_exit.attach import probe_attach_points
from ..early_exit.branch import format_shape
from ..early_exit.builtin import declared_exits
from ..early_exit.exits import EarlyExits
from ..errors import DistillEEError
from ..routing import Routing
from ..schedule import read_schedule
from ..schedule.build import build_scheduler
from ..schedule.spec import ComponentSpec, PolicySpec, Schedule
from ..summaries import total_macs
from .args import OneLineErrorParser
from .datasets import dataset_info
from .models import create_model

Matches = Dict[Tuple[str, str], List[Tuple[str, List[str]]]]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``distill-ee check``."""
    p = OneLineErrorParser(prog="distill-ee check",
                           description="Validate a schedule against a model and print the resolved plan "
                                       "(no training).")
    p.add_argument("schedule", metavar="SCHEDULE", help="the schedule (YAML)")
    p.add_argument("-a", "--arch", required=True, help="model architecture")
    p.add_argument("--dataset", default="mnist5k", help="dataset whose input shape and classes the model takes "
                                                        "(default: mnist5k)")
    p.add_argument("--data", default=None, metavar="DATASET_DIR", help="dataset directory (not for mnist5k)")
    p.add_argument("--epochs", type=int, default=None, help="number of training epochs, to show which epochs "
                                                            "each policy runs in a run of that length")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the check; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        print(check(args.schedule, args.arch, args.dataset, args.data, args.epochs))
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check(path: str, arch: str, dataset: str = "mnist5k", data: Optional[str] = None,
          epochs: Optional[int] = None) -> str:
    """The plan of schedule ``path`` on a fresh ``arch`` model, as text; DistillEEError when it is not valid."""
    schedule = read_schedule(path, stdin=True)
    info = dataset_info(dataset, data)
    model = create_model(arch, num_classes=info.num_classes, in_channels=info.input_shape[0])
    example = torch.zeros(1, *info.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    matches: Matches = {}

    def collect(spec: ComponentSpec, component: Any, ctx: BuildContext) -> None:
        matches[(spec.section.name, spec.name)] = list(ctx.matches)

    scheduler = build_scheduler(schedule, model, optimizer, example_input=example, on_built=collect)
    parts = [f"{path}: valid for --arch {arch} ({dataset}: input {format_shape((1, *info.input_shape))}, "
             f"{info.num_classes} classes); {len(scheduler.policies)} policies",
             _policies(schedule, epochs), _matches(matches)]
    routing = Routing.of(model)
    if routing is not None:
        parts.append(_routing(routing, scheduler.components.get("routing", {}).get(routing.name)))
    exits = EarlyExits.of(model)
    if exits is not None:
        parts.append(_exits(model, exits, example))
    elif declared_exits(model):
        parts.append(f"{arch} declares built-in classifiers ({', '.join(declared_exits(model))}); an early_exits "
                     f"instance takes them with `attach: builtin`")
    return "\n\n".join(p for p in parts if p)


def _policies(schedule: Schedule, epochs: Optional[int]) -> str:
    rows = [[p.index, p.kind, p.instance_name, schedule.components[p.section.name][p.instance_name].class_name,
             _window(p), _in_run(p, epochs)] for p in schedule.policies]
    headers = ["#", "policy", "instance", "class", "epochs", f"runs in a {epochs}-epoch run" if epochs else ""]
    if epochs is None:
        rows = [r[:-1] for r in rows]
        headers = headers[:-1]
    return "Policies\n" + tabulate(rows, headers=headers, tablefmt="psql")


def _window(p: PolicySpec) -> str:
    if p.epochs is not None:
        return "epochs " + ", ".join(str(e) for e in p.epochs)
    every = f" every {p.frequency}" if p.frequency != 1 else ""
    return f"{p.starting_epoch} to {p.ending_epoch - 1}{every}"


def _in_run(p: PolicySpec, epochs: Optional[int]) -> str:
    if epochs is None:
        return ""
    due = p.epochs if p.epochs is not None else list(range(p.starting_epoch, p.ending_epoch, p.frequency))
    ran = [e for e in due if e < epochs]
    if not ran:
        return "never"
    return f"{len(ran)} epoch(s): {ran[0]}..{ran[-1]}" if len(ran) > 1 else f"epoch {ran[0]}"


def _matches(matches: Matches) -> str:
    rows = []
    for (section, name), found in matches.items():
        for pattern, hits in found:
            shown = ", ".join(hits[:4]) + (f" ... ({len(hits)} in all)" if len(hits) > 4 else "")
            rows.append([f"{section}.{name}", pattern, len(hits), shown])
    if not rows:
        return ""
    return "Parameters and modules matched\n" + tabulate(rows, headers=["component", "name or pattern", "matches",
                                                                        "names"], tablefmt="psql")


def _routing(routing: Routing, component: Any) -> str:
    rs = routing.set
    rows = [[name, f"{macs:,}", f"{100.0 * cost:.1f}%"] for name, macs, cost in zip(rs.block_names, rs.block_macs,
                                                                                   rs.costs)]
    left_out = list(getattr(component, "left_out", []))
    note = f"\nLeft out of the patterns (downsampling blocks): {', '.join(left_out)}" if left_out else ""
    return (f"Routing {routing.name!r} ({routing.kind}): {rs.num_blocks} blocks may be skipped, "
            f"{100.0 * sum(rs.costs):.1f}% of the backbone's {rs.backbone_macs:,} MACs\n"
            + tabulate(rows, headers=["block", "MACs", "of backbone"], tablefmt="psql") + note)


def _exits(model: nn.Module, exits: EarlyExits, example: torch.Tensor) -> str:
    exit_set = exits.exit_set
    probes = probe_attach_points(model, exit_set.attach, exit_set.input_shape)
    macs = exits.exit_macs()
    backbone, _ = total_macs(model, example)
    rows = []
    builtin = {n for n, e in declared_exits(model).items() if exit_set.attach_points.get(n) == e["attach"]}
    for k, name in enumerate(exits.output_names):
        is_exit = k < len(exit_set)
        shape = format_shape(tuple(probes[k].output.shape)) if is_exit else "-"
        params = sum(p.numel() for p in exit_set[name].parameters()) if is_exit else "-"
        attach = "(the model's output)"
        if is_exit:
            attach = exit_set.attach[k] + (" (built-in)" if name in builtin else "")
        rows.append([name, attach, shape,
                     exits.criteria[k] if is_exit else "-", exits.thresholds[k] if is_exit else "-", params,
                     f"{macs[k]:,}", f"{100.0 * macs[k] / max(backbone, 1):.1f}%"])
    return "Exits (MACs per sample to leave there, branches on the way included)\n" + tabulate(
        rows, headers=["exit", "attach", "reads", "criterion", "threshold", "branch params", "MACs",
                       "of backbone"], tablefmt="psql")
