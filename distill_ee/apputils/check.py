"""``distill-ee check SCHEDULE --arch ARCH`` (or ``--model PACKAGE.MODULE:CALLABLE --input-shape ...``): validate
a schedule against a model and print the resolved plan.

Nothing is trained. The schedule is built on a fresh model of the zoo's architecture (or of the user's own
model, on a dummy input of the shape, dtype and value range given), exactly as a run would build it, and the
plan is printed: each policy with the epochs it runs, the parameters each name or pattern matched, and the
exits with the shape they read and the MACs of leaving there. A bad schedule (or a bad ``--model`` flag) is
one located line on stderr and exit status 2, as everywhere.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from tabulate import tabulate
from torch import nn

from ..context import BuildContext
from ..early_exit.attach import probe_attach_points
from ..early_exit.branch import format_shape
from ..early_exit.builtin import declared_exits
from ..early_exit.exits import EarlyExits
from ..errors import ConfigError, DistillEEError
from ..inputs import InputSpec
from ..modules import eval_mode, example_input, first_line
from ..routing import Routing
from ..schedule import read_schedule
from ..schedule.build import build_scheduler
from ..schedule.spec import ComponentSpec, PolicySpec, Schedule
from ..summaries import total_macs
from ..thinning import StructureRemover
from ..thinning.targets import target_notes
from .args import OneLineErrorParser
from .datasets import dataset_info
from .models import create_model
from .user_model import load_user_model, parse_input

Matches = Dict[Tuple[str, str], List[Tuple[str, List[str]]]]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``distill-ee check``."""
    p = OneLineErrorParser(prog="distill-ee check",
                           description="Validate a schedule against a model and print the resolved plan "
                                       "(no training).")
    p.add_argument("schedule", metavar="SCHEDULE", help="the schedule (YAML)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-a", "--arch", help="model architecture of the zoo")
    which.add_argument("--model", metavar="PACKAGE.MODULE:CALLABLE", help="your own model: a callable returning "
                       "an nn.Module (or timm:NAME, with timm installed)")
    p.add_argument("--model-args", metavar="JSON", help="keyword arguments of the --model callable (a JSON object)")
    p.add_argument("--input-shape", metavar="C,H,W", help="one sample's shape of the --model's input")
    p.add_argument("--input-dtype", metavar="DTYPE", help="the --model's input dtype (default float; long, int32 "
                                                           "... for token ids)")
    p.add_argument("--input-range", metavar="LOW,HIGH", help="the values of an integer input (HIGH excluded)")
    p.add_argument("--dataset", default=None, help="dataset whose input shape and classes the model takes "
                                                        "(default: mnist5k)")
    p.add_argument("--data", default=None, metavar="DATASET_DIR", help="dataset directory (not for mnist5k)")
    p.add_argument("--epochs", type=int, default=None, help="number of training epochs, to show which epochs "
                                                            "each policy runs in a run of that length")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the check; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        _check_flags(args)
        if args.model is not None:
            spec = parse_input(args.input_shape, args.input_dtype, args.input_range)
            print(check_model(args.schedule, args.model, spec, args.model_args, args.epochs))
        else:
            print(check(args.schedule, args.arch, args.dataset or "mnist5k", args.data, args.epochs))
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """ConfigError for a flag of the other kind of model: ``--dataset``/``--data`` with ``--model``, the input
    and model-argument flags with ``--arch``."""
    if args.model is not None:
        given = [flag for flag, value in (("--dataset", args.dataset), ("--data", args.data)) if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)}: for --arch; --model takes --input-shape instead")
        return
    given = [flag for flag, value in (("--model-args", args.model_args), ("--input-shape", args.input_shape),
                                      ("--input-dtype", args.input_dtype), ("--input-range", args.input_range))
             if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: for --model (a zoo --arch takes its input from --dataset)")


def check(path: str, arch: str, dataset: str = "mnist5k", data: Optional[str] = None,
          epochs: Optional[int] = None) -> str:
    """The plan of schedule ``path`` on a fresh ``arch`` model, as text; DistillEEError when it is not valid."""
    schedule = read_schedule(path, stdin=True)
    info = dataset_info(dataset, data)
    model = create_model(arch, num_classes=info.num_classes, in_channels=info.input_shape[0])
    title = (f"{path}: valid for --arch {arch} ({dataset}: input {format_shape((1, *info.input_shape))}, "
             f"{info.num_classes} classes)")
    return _plan(schedule, model, torch.zeros(1, *info.input_shape), title, epochs, arch)


def check_model(path: str, name: str, spec: InputSpec, model_args: Optional[str] = None,
                epochs: Optional[int] = None) -> str:
    """The plan of schedule ``path`` on the user's model ``name`` (``load_user_model``) taking ``spec``."""
    schedule = read_schedule(path, stdin=True)
    model = load_user_model(name, model_args)
    x = example_input(model, spec, batch=1)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001  (the user's model cannot take the input given)
        raise ConfigError(f"--model {name}: fails on an input {spec.describe()} ({first_line(err)})") from None
    shape = format_shape(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
    return _plan(schedule, model, spec, f"{path}: valid for --model {name} (input {spec.describe()}, output "
                 f"{shape})", epochs, name)


def _plan(schedule: Schedule, model: nn.Module, given: Union[torch.Tensor, InputSpec], title: str,
          epochs: Optional[int], arch: str) -> str:
    """The schedule built on ``model`` for the example input ``given`` (a batch or an InputSpec), and what it
    resolved to, as text."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    matches: Matches = {}

    def collect(spec: ComponentSpec, component: Any, ctx: BuildContext) -> None:
        matches[(spec.section.name, spec.name)] = list(ctx.matches)

    example = given if isinstance(given, torch.Tensor) else example_input(model, given, batch=1)
    scheduler = build_scheduler(schedule, model, optimizer, example_input=given, on_built=collect)
    parts = [f"{title}; {len(scheduler.policies)} policies", _policies(schedule, epochs), _matches(matches),
             _thinning(model, scheduler.policies, matches)]
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


def _thinning(model: nn.Module, policies: List[Any], matches: Matches) -> str:
    """Each pruner's target with what each thinning of the schedule will do with it (removable, or kept and why)."""
    removers = [p for p in policies if isinstance(p, StructureRemover)]
    targets = list(dict.fromkeys(hit for (section, _), found in matches.items() if section == "pruners"
                                 for _, hits in found for hit in hits if hit.endswith(".weight")))
    rows = [[remover.name, target, note] for remover in removers
            for target, note in target_notes(model, targets, remover.removes)]
    if not rows:
        return ""
    return "Thinning of the pruned layers\n" + tabulate(rows, headers=["thinning", "target", "what happens"],
                                                        tablefmt="psql")


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
    probes = probe_attach_points(model, exit_set.attach, exit_set.input_spec)
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
