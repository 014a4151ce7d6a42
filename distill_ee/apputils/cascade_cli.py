"""``distill-ee cascade CASCADE.yaml``: trained models chained small to big, calibrated and measured for real.

The file lists the members, each a checkpoint of the sample app (its architecture, exits and thinning come
with it) and, for every member but the last, its rule::

    dataset: mnist5k                      # the dataset the members were trained on (data: DIR if needed)
    members:
      - name: lenet
        checkpoint: runs/cascade_lenet___*/checkpoint.pth.tar   # a pattern takes the newest match
        rule: {kind: max_prob, threshold: 0.9}   # Big/Little: max_prob, margin or entropy; or {kind: idk, beta: 0.5}
      - name: resnet
        checkpoint: runs/cascade_resnet___*/checkpoint.pth.tar

``--calibrate drop=0.5|macs=0.3`` chooses the thresholds of the confidence rules on the validation split (the
early exits' search, member ``k`` being "exit ``k``"); an IDK rule fits its classifier on the validation split
and takes its threshold from the paper's cost-aware objective with the members' measured times. The run
directory gets ``summary.json``, ``tradeoff.csv`` and ``tradeoff.png`` (the cascade's curve on validation).
"""
from __future__ import annotations

import argparse
import glob
import logging
import math
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Dict, List, Optional

import torch
from tabulate import tabulate

from ..cascade import (Cascade, IDKCriterion, Member, cascade_rules, choose_idk_thresholds, fit_idk,
                       measure_cascade_speed)
from ..checkpoint import load_checkpoint, read_checkpoint
from ..early_exit.calibrate import calibrate, split_figures
from ..early_exit.exits import EarlyExits
from ..early_exit.tradeoff import measure_point
from ..arguments import ArgumentError, Checked, Count
from ..errors import CheckpointError, ConfigError, DistillEEError
from ..file_names import name_problem
from ..registry import suggest
from ..timing import interleaved_rounds
from ..schedule.source import ScheduleSource, load_as, read_yaml_file
from ..summaries import total_macs
from .args import OneLineErrorParser, check_out_dir, check_run_name
from .calibration import parse_target
from .datasets import check_trained_on, dataset_info, load_dataset, make_loaders
from .models import create_model
from .run_dir import RunDir, setup_logging
from .tradeoff_files import write_tradeoff

log = logging.getLogger("distill_ee")
#: the most members a cascade chains
MAX_MEMBERS = 16


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``distill-ee cascade``."""
    p = OneLineErrorParser(prog="distill-ee cascade", description="Chain trained models small to big; calibrate "
                                                                  "and measure the cascade for real.")
    p.add_argument("config", metavar="CASCADE", help="the cascade (YAML)")
    p.add_argument("--calibrate", metavar="TARGET", default=None,
                   help="choose the confidence rules' thresholds on the validation split: drop=0.5 or macs=0.3")
    p.add_argument("-o", "--out-dir", default="logs", help="where the run directory is made (default logs)")
    p.add_argument("-n", "--name", default="cascade", help="run directory name prefix (default cascade)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size of the timed inference (256)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the cascade; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        check_run_name(args.name)
        check_out_dir(args.out_dir)
        if args.batch_size < 1:
            raise ConfigError(f"-b/--batch-size must be at least 1, got {args.batch_size}")
        target = parse_target(args.calibrate) if args.calibrate else None
        if target is not None and target.kind not in ("drop", "macs"):
            raise ConfigError(f"--calibrate takes drop= or macs= for a cascade, got {args.calibrate!r}")
        spec = read_config(args.config)
        run(args, spec, target)
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- the file
def _rule(rule: Any) -> Dict[str, Any]:
    """A member's rule: ``{kind: <a confidence criterion>, threshold: t}`` or ``{kind: idk, beta: b}``."""
    rules = cascade_rules()
    if not isinstance(rule, dict) or "kind" not in rule:
        raise ArgumentError("every member but the last needs `rule: {kind: ...}`", valid=list(rules))
    kind = rule["kind"]
    if not isinstance(kind, str) or kind not in rules:
        raise ArgumentError(f"unknown rule {kind!r}", ("kind",), valid=list(rules),
                            suggestions=suggest(str(kind), rules))
    allowed = ("kind", *getattr(rules[kind], "rule_keys", ("threshold",)))
    for key in rule:
        if key not in allowed:
            raise ArgumentError(f"unknown key {key!r} for a {kind} rule", (key,), valid=list(allowed))
    for key in allowed[1:]:
        value = rule.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ArgumentError(f"must be a finite number >= 0, got {value!r}", (key,))
    return dict(rule)


def _member_name(value: Any) -> str:
    problem = name_problem(value)
    if problem:
        raise ArgumentError(f"a member's name {problem}")
    return value


def _checkpoint_pattern(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"a member needs `checkpoint` (a checkpoint of the sample app), got {value!r}")
    return value


@dataclass
class MemberSpec:
    """One member of the cascade: its checkpoint (a pattern takes the newest match), name, architecture, rule."""

    owner: ClassVar[str] = "a member"
    shape: ClassVar[str] = "a member is a mapping with `checkpoint` (and `name`, `rule`)"
    checkpoint: Annotated[str, Checked("a checkpoint file or pattern", _checkpoint_pattern)]
    name: Optional[Annotated[str, Checked("a plain name", _member_name)]] = None
    arch: Optional[str] = None
    rule: Optional[Annotated[Dict[str, Any], Checked("{kind: ..., threshold: ...}", _rule)]] = None


@dataclass
class CascadeFile:
    """A cascade file: the dataset, and the members small to big."""

    owner: ClassVar[str] = "a cascade file"
    shape: ClassVar[str] = "a cascade file is a mapping with `members` (and `dataset`, `data`)"
    members: Annotated[List[MemberSpec], Count(2, MAX_MEMBERS, "members, small to big")]
    dataset: str = "mnist5k"
    data: Optional[str] = None


def read_config(path: str) -> Dict[str, Any]:
    """The cascade file checked: dataset, and members with checkpoint files that exist and rules."""
    source = read_yaml_file(path, "cascade file", shape=CascadeFile.shape)
    spec = load_as(source, CascadeFile)
    out = [_member(source, i, m, last=i == len(spec.members) - 1) for i, m in enumerate(spec.members)]
    names = [m["name"] for m in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise source.error(["members", i, "name"], f"two members are named {name!r}")
    return {"dataset": spec.dataset, "data": spec.data, "members": out, "file": path}


def _member(source: ScheduleSource, i: int, member: MemberSpec, last: bool) -> Dict[str, Any]:
    where: List[Any] = ["members", i]
    found = sorted(glob.glob(member.checkpoint), key=lambda p: Path(p).stat().st_mtime)
    if not found:
        raise source.error([*where, "checkpoint"], f"no file matches {member.checkpoint!r}")
    if last and member.rule is not None:
        raise source.error([*where, "rule"], "the last member answers every sample it gets: it takes no rule")
    if not last and member.rule is None:
        raise source.error(where, "every member but the last needs `rule: {kind: ...}`", valid=list(cascade_rules()))
    name = member.name if member.name is not None else Path(found[-1]).parent.name
    problem = name_problem(name)
    if problem:
        raise source.error(where, f"the member's name (its checkpoint's folder unless given) {problem}; give `name`")
    return {"name": name, "checkpoint": found[-1], "arch": member.arch, "rule": member.rule}


# --------------------------------------------------------------------------- running
def load_member(spec: Dict[str, Any], info: Any) -> Member:
    """A member from its checkpoint (architecture from the file unless given), checked against the cascade's
    data, with its MACs per sample."""
    state = read_checkpoint(spec["checkpoint"])
    arch = spec["arch"] or state.get("arch")
    if not isinstance(arch, str):
        raise ConfigError(f"{spec['checkpoint']}: the checkpoint does not name its architecture; give `arch`")
    check_trained_on(state, info, f"member {spec['name']!r} ({spec['checkpoint']})")
    model = create_model(arch, info.num_classes, info.input_shape[0])
    try:
        load_checkpoint(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{spec['checkpoint']}: {err}") from None
    return Member(spec["name"], model.eval(), 0.0)


def run(args: argparse.Namespace, spec: Dict[str, Any], target: Any) -> None:
    """Build, calibrate, measure and report."""
    info = dataset_info(spec["dataset"], spec["data"])
    members = [load_member(m, info) for m in spec["members"]]
    splits = load_dataset(spec["dataset"], spec["data"])
    _, valid, test = make_loaders(splits, 256)
    if valid is None:
        raise ConfigError("a cascade is calibrated on the validation split, and the dataset has none")
    run_dir = RunDir(args.out_dir, args.name)
    setup_logging(run_dir.log_file)
    rules = cascade_rules()
    criteria = [rules[m["rule"]["kind"]]() for m in spec["members"][:-1]]
    cascade = Cascade(members, criteria, [m["rule"].get("threshold") for m in spec["members"][:-1]])
    valid_logits, valid_y = cascade.simulate_loader(valid)
    test_logits, test_y = cascade.simulate_loader(test)
    _macs(cascade, valid)
    inputs = torch.cat([x for x, _ in test])
    _time_members(cascade, inputs, args.batch_size)
    summary: Dict[str, Any] = {"members": [], "config": spec["file"]}
    idk = _fit_idk(cascade, spec, valid_logits, valid_y)
    if idk:
        summary["idk"] = idk
    if target is not None:
        _calibrate(cascade, valid_logits, valid_y, target, summary)
    _report(cascade, valid_logits, valid_y, test_logits, test_y, inputs, args, run_dir, summary)


def _macs(cascade: Cascade, loader: Any) -> None:
    """Each member's MACs per sample: its own (a member with exits: the average over the validation split at
    its thresholds)."""
    example = next(iter(loader))[0][:1]
    for member in cascade.members:
        exits = EarlyExits.of(member.model)
        if exits is None:
            member.macs = float(total_macs(member.model, example)[0])
        else:
            rows = exits.evaluate(loader)
            member.macs = float(sum(r["taken_pct"] / 100.0 * r["macs"] for r in rows))


def _time_members(cascade: Cascade, inputs: torch.Tensor, batch_size: int) -> None:
    """Each member's measured seconds per sample (interleaved rounds, best round)."""
    batches = list(torch.split(inputs, batch_size))
    candidates = {m.name: (lambda k=k: [cascade.run_member(k, b) for b in batches]) for k, m in
                  enumerate(cascade.members)}
    rounds = interleaved_rounds(candidates, 3, context=torch.inference_mode)
    for member in cascade.members:
        member.seconds = min(rounds[member.name]) / inputs.shape[0]


def _fit_idk(cascade: Cascade, spec: Dict[str, Any], logits: List[torch.Tensor], y: torch.Tensor
             ) -> Dict[str, Any]:
    """IDK rules: classifiers fitted on validation, thresholds from the cost-aware objective (measured time)."""
    fitted = [k for k, c in enumerate(cascade.criteria) if isinstance(c, IDKCriterion)]
    if not fitted:
        return {}
    for k in fitted:
        cascade.criteria[k] = IDKCriterion(fit_idk(logits[k], y))
    beta = float(spec["members"][fitted[0]]["rule"].get("beta", 0.5))
    thresholds, objective, _, _ = choose_idk_thresholds(logits, y, cascade.criteria, cascade.costs("seconds"), beta)
    for k in fitted:
        cascade.thresholds[k] = thresholds[k]
    log.info("IDK thresholds (cost-aware objective, beta %g, measured times): %s; objective %.4f on validation",
             beta, thresholds, objective)
    return {"beta": beta, "thresholds": thresholds, "objective": objective}


def _calibrate(cascade: Cascade, logits: List[torch.Tensor], y: torch.Tensor, target: Any,
               summary: Dict[str, Any]) -> None:
    costs = cascade.costs()
    result = calibrate(logits, y, cascade.criteria, costs.macs_per_exit, costs.full_macs, target)
    cascade.thresholds = list(result.thresholds)
    summary["calibration"] = {"target": target.text, "thresholds": list(result.thresholds),
                              "valid": split_figures(result.chosen, result.final_top1, cascade.names)}
    summary["_front"] = (result.front, result.chosen, result.final_point, target.guides(result.final_top1))
    log.info("Calibrated the cascade for %s on the validation split: thresholds %s", target.text,
             result.thresholds)


def _report(cascade: Cascade, valid_logits: List[torch.Tensor], valid_y: torch.Tensor,
            test_logits: List[torch.Tensor], test_y: torch.Tensor, inputs: torch.Tensor, args: argparse.Namespace,
            run_dir: RunDir, summary: Dict[str, Any]) -> None:
    costs = cascade.costs()
    point = measure_point(test_logits, test_y, cascade.criteria, cascade.thresholds, costs)
    _, chosen = cascade.decide(test_logits)
    rows = []
    for k, member in enumerate(cascade.members):
        mine = chosen == k
        taken_top1 = float((test_logits[k][mine].argmax(1) == test_y[mine]).double().mean() * 100) if mine.any() \
            else None
        alone = float((test_logits[k].argmax(1) == test_y).double().mean() * 100)
        row = {"name": member.name, "threshold": cascade.thresholds[k] if k < len(cascade.thresholds) else None,
               "taken_pct": float(mine.double().mean() * 100), "top1_taken": taken_top1, "top1_alone": alone,
               "macs": member.macs, "seconds": member.seconds, "has_exits": member.has_exits}
        rows.append(row)
    summary["members"] = rows
    speed = measure_cascade_speed(cascade, inputs, args.batch_size)
    summary["test"] = {"top1": point.top1, "macs_fraction": point.macs_fraction,
                       "expected_macs": point.expected_macs, **speed}
    table = [[r["name"], "-" if r["threshold"] is None else f"{r['threshold']:.4g}", f"{r['taken_pct']:.1f}",
              "-" if r["top1_taken"] is None else f"{r['top1_taken']:.2f}", f"{r['top1_alone']:.2f}",
              f"{r['macs']:,.0f}", f"{1e6 * r['seconds']:.1f}"] for r in rows]
    log.info("Cascade on the test split:\n%s", tabulate(table, headers=[
        "member", "threshold", "taken %", "top1 taken", "top1 alone", "MACs", "us per sample"], tablefmt="psql"))
    log.info("Test: top1 %.2f (the last member alone %.2f) at %.1f%% of its MACs; real cascade %.2fx faster than "
             "the last member alone at batch %d (%.2f of the oracle bound, spread %.0f%%; %d of %d samples reached "
             "it; real = simulated: %s)", point.top1, rows[-1]["top1_alone"], 100 * point.macs_fraction,
             speed["speedup"], args.batch_size, speed["oracle_ratio"], 100 * speed["spread"], speed["reached_last"],
             inputs.shape[0], speed["real_equals_simulated"])
    front = summary.pop("_front", None)
    if front is not None:
        files = write_tradeoff(front[0], front[1], str(run_dir.path), final=front[2], exit_names=cascade.names,
                               guides=front[3], rule="cascade thresholds")
        summary["files"] = [Path(f).name for f in files]
    run_dir.write_json("summary.json", summary)
    log.info("Results in %s", run_dir.path)


