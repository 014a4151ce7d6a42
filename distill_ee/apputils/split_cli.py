"""``distill-ee plan-split CHECKPOINT TIERS.yaml``: place a multi-exit model's stages on device, edge and cloud.

The tier file describes the machines in order (the first holds the input) and the links between them::

    tiers:
      - {name: device, speed: 0.25}          # relative to this machine; or profile: {stages: [s...], branches: [s...]}
      - {name: edge, speed: 1.0}
      - {name: cloud, speed: 1.0}
    links:                                    # tier i -> tier i+1
      - {bandwidth_mbps: 20, latency_ms: 10}
      - {bandwidth_mbps: 100, latency_ms: 20}

The planner measures, on this machine: each stage's and branch's time at batch 1 on ONNX Runtime (the export
it places), the bytes that cross each cut (the activations later stages still need, dtype-aware) and the exit
rates on the validation split at the checkpoint's thresholds. It prints every placement ranked by expected
latency per sample, writes the recommended one (``tiers/``: a zip per tier and ``placement.json``) and, with
``--simulate N``, runs the tiers as processes joined by pipes on N validation images and compares the measured
latency with the plan.
"""
from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch
from tabulate import tabulate

from ..checkpoint import load_checkpoint, read_checkpoint
from ..deploy import MultiExitSession
from ..deploy.profile import profile_session
from ..deploy.tiers import (Link, SplitInputs, Tier, check_simulation, expected_latency, plan, reach_of, simulate,
                            write_tiers)
from ..early_exit.exits import EarlyExits
from ..early_exit.onnx_export import export_onnx
from ..arguments import ArgumentError, Checked, Count
from ..errors import ConfigError, DistillEEError
from ..file_names import name_problem
from ..schedule.source import load_as, read_yaml_file
from .args import OneLineErrorParser, check_out_dir, check_run_name
from .datasets import dataset_info, load_dataset, make_loaders
from .models import create_model
from .run_dir import RunDir, setup_logging

log = logging.getLogger("distill_ee")
#: bounds of a tier file (a plan ranks every placement: tiers and stages multiply them)
MAX_TIERS = 8
MAX_STAGES = 64
SPEEDS = (1e-4, 1e4)
MAX_SECONDS = 60.0
BANDWIDTHS_MBPS = (1e-3, 1e6)
MAX_LATENCY_MS = 60_000.0
#: the simulation's measured latency must be this close to the plan's
TOLERANCE = 0.2


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``distill-ee plan-split``."""
    p = OneLineErrorParser(prog="distill-ee plan-split",
                           description="Rank placements of a multi-exit model's stages on tiers; write the best.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint of the sample app with early exits")
    p.add_argument("tiers", metavar="TIERS", help="the tiers and links (YAML)")
    p.add_argument("--dataset", default=None, help="dataset for the exit rates (default: the checkpoint's)")
    p.add_argument("--data", default=None, metavar="DATASET_DIR", help="dataset directory (not for mnist5k)")
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="run the recommended placement as processes on N validation images and compare")
    p.add_argument("-o", "--out-dir", default="logs", help="where the run directory is made (default logs)")
    p.add_argument("-n", "--name", default="split", help="run directory name prefix (default split)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Plan (and simulate); user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        check_run_name(args.name)
        check_out_dir(args.out_dir)
        if not 0 <= args.simulate <= 10_000:
            raise ConfigError(f"--simulate takes 0 to 10000 images, got {args.simulate}")
        tiers, links = read_tiers(args.tiers)
        run(args, tiers, links)
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- the tier file
def _finite_number(value: Any, low: float, inclusive: bool, bounds: Tuple[float, float], unit: str) -> float:
    """A finite number above ``low`` (or at least it), within ``bounds`` (the sane range of its kind)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < low or (not inclusive and value == low):
        raise ArgumentError(f"must be a finite number {'of at least' if inclusive else 'above'} {low:g}, "
                            f"got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise ArgumentError(f"must be from {bounds[0]:g} to {bounds[1]:g}{unit}, got {value!r}")
    return float(value)


def _speed(value: Any) -> float:
    return _finite_number(value, 0.0, False, SPEEDS, " (times this machine's speed)")


def _seconds(value: Any) -> float:
    return _finite_number(value, 0.0, True, (0.0, MAX_SECONDS), " seconds per sample")


def _bandwidth(value: Any) -> float:
    return _finite_number(value, 0.0, False, BANDWIDTHS_MBPS, " Mbit/s")


def _latency(value: Any) -> float:
    return _finite_number(value, 0.0, True, (0.0, MAX_LATENCY_MS), " ms")


def _tier_name(value: Any) -> str:
    problem = name_problem(value)
    if problem:
        raise ArgumentError(f"a tier's name becomes a file name: it {problem}")
    return value


Seconds = Annotated[float, Checked("seconds per sample", _seconds)]


@dataclass
class ProfileSpec:
    """A tier's own measured seconds per sample of every stage and branch."""

    owner: ClassVar[str] = "a profile"
    shape: ClassVar[str] = "a profile is {stages: [seconds...], branches: [seconds...]}"
    stages: Annotated[List[Seconds], Count(1, MAX_STAGES, "stages")]
    branches: Annotated[List[Seconds], Count(0, MAX_STAGES, "branches")]


@dataclass
class TierSpec:
    """One machine: its name, and its speed relative to this one or its own measured profile."""

    owner: ClassVar[str] = "a tier"
    shape: ClassVar[str] = "a tier is a mapping with `name` and `speed` (or `profile`)"
    name: Annotated[str, Checked("a plain name", _tier_name)]
    speed: Annotated[float, Checked("a number above 0", _speed)] = 1.0
    profile: Optional[ProfileSpec] = None


@dataclass
class LinkSpec:
    """The connection from one tier to the next."""

    owner: ClassVar[str] = "a link"
    shape: ClassVar[str] = "a link is {bandwidth_mbps: ..., latency_ms: ...}"
    bandwidth_mbps: Annotated[float, Checked("a number above 0", _bandwidth)]
    latency_ms: Annotated[float, Checked("a number of at least 0", _latency)]


@dataclass
class TierFile:
    """A tier file: the tiers in order (the first holds the input) and the links between them."""

    owner: ClassVar[str] = "a tier file"
    shape: ClassVar[str] = "a tier file is a mapping with `tiers` and `links`"
    tiers: Annotated[List[TierSpec], Count(2, MAX_TIERS, "tiers, the one holding the input first")]
    links: Optional[List[LinkSpec]] = None


def read_tiers(path: str) -> Tuple[List[Tier], List[Link]]:
    """Tiers and links from a tier file (``distill_ee.input_files``: a regular file, bounded); located errors."""
    source = read_yaml_file(path, "tier file", shape=TierFile.shape)
    spec = load_as(source, TierFile)
    names = [t.name for t in spec.tiers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise source.error(["tiers", i, "name"], f"two tiers are named {name!r}")
    given = spec.links or []
    if len(given) != len(spec.tiers) - 1:
        raise source.error(["links"], f"{len(spec.tiers)} tiers need {len(spec.tiers) - 1} links (tier i to tier "
                                      f"i+1), got {len(given) if spec.links is not None else 'none'}")
    tiers = [Tier(t.name, t.speed, t.profile.stages if t.profile else None, t.profile.branches if t.profile else None)
             for t in spec.tiers]
    links = [Link(link.bandwidth_mbps * 1e6 / 8.0, link.latency_ms / 1e3) for link in given]
    return tiers, links


# --------------------------------------------------------------------------- measuring and planning
def run(args: argparse.Namespace, tiers: List[Tier], links: List[Link]) -> Dict[str, Any]:
    """Measure, plan, write, simulate; the summary."""
    state = read_checkpoint(args.checkpoint)
    dataset = args.dataset or state.get("dataset") or "mnist5k"
    info = dataset_info(dataset, args.data)
    model = create_model(str(state.get("arch")), info.num_classes, info.input_shape[0])
    load_checkpoint(model, state)
    model.eval()
    exits = EarlyExits.of(model)
    if exits is None:
        raise ConfigError(f"{args.checkpoint}: the model has no early exits to split at")
    check_profiles(tiers, len(exits.exit_names) + 1, len(exits.exit_names))
    _, valid, _ = make_loaders(load_dataset(dataset, args.data), 256)
    if valid is None:
        raise ConfigError("the exit rates are measured on the validation split, and the dataset has none")
    with tempfile.TemporaryDirectory() as scratch:  # measured and planned before anything is written
        multi = exits.multi_exit_model().eval()
        export_onnx(multi, model, Path(scratch) / "onnx")
        session = MultiExitSession(Path(scratch) / "onnx", threads=1)
        images = torch.cat([x for x, _ in valid])
        inputs = _measure(exits, session, images, valid, tiers)
        placements = plan(inputs, tiers, links)
        best = placements[0]
        if args.simulate:
            check_simulation(best.latency, args.simulate)
        run_dir = RunDir(args.out_dir, args.name)
        setup_logging(run_dir.log_file)
        shutil.copytree(Path(scratch) / "onnx", run_dir.file("onnx"))
        session = MultiExitSession(run_dir.file("onnx"), threads=1)
        return _report(args, run_dir, session, inputs, placements, images, tiers, links)


def _report(args: argparse.Namespace, run_dir: RunDir, session: MultiExitSession, inputs: SplitInputs,
            placements: List[Any], images: torch.Tensor, tiers: List[Tier], links: List[Link]) -> Dict[str, Any]:
    """Log the ranked placements, write the recommended one's files, simulate it when asked; the summary."""
    best = placements[0]
    rows = [[rank + 1, p.describe(tiers), f"{1e3 * p.latency:.3f}", f"{1e3 * p.compute:.3f}", f"{1e3 * p.transfer:.3f}"]
            for rank, p in enumerate(placements)]
    log.info("Placements by expected latency per sample (ms; %d stages, exit rates on validation %s):\n%s",
             len(inputs.stage_seconds), " / ".join(f"{100 * r:.1f}" for r in inputs.reach),
             tabulate(rows, headers=["rank", "stages per tier", "latency", "compute", "transfer"], tablefmt="psql"))
    log.info("Recommended: %s, %.3f ms per sample", best.describe(tiers), 1e3 * best.latency)
    files = write_tiers(session.manifest, best, tiers, links, run_dir.file("tiers"))
    summary: Dict[str, Any] = {"inputs": inputs.__dict__, "recommended": best.owner,
                               "placements": [{"owner": p.owner, "latency": p.latency, "compute": p.compute,
                                               "transfer": p.transfer} for p in placements],
                               "files": [str(f.relative_to(run_dir.path)) for f in files]}
    if args.simulate:
        summary["simulation"] = _simulate(run_dir, images[:args.simulate].numpy(), inputs, best, tiers, links)
    run_dir.write_json("summary.json", summary)
    log.info("Results in %s", run_dir.path)
    return summary


def _measure(exits: EarlyExits, session: MultiExitSession, images: torch.Tensor, valid: Any,
             tiers: List[Tier]) -> SplitInputs:
    """Stage and branch times (ORT, batch 1), bytes at each cut, the share of samples reaching each stage."""
    profile = profile_session(session, images[:64].numpy(), batch_size=1)
    rows = exits.evaluate(valid)
    reach = reach_of([r["taken_pct"] / 100.0 for r in rows])
    return SplitInputs(profile.stages, profile.branches, cut_bytes(session, images[:1].numpy()), reach,
                       [t is not None for t in session.thresholds])


def cut_bytes(session: MultiExitSession, x: np.ndarray) -> List[int]:
    """Bytes per sample crossing a cut before each stage: the input before stage 0, then what later stages still
    need after each exit (``plan.carry``), at each value's own dtype."""
    plan_ = session.plan
    env: List[Any] = [None] * plan_["num_slots"]
    env[0] = np.ascontiguousarray(x, dtype=np.float32)
    out = [int(env[0].nbytes)]
    for k in range(len(session.stages) - 1):
        session.run_stage(k, env)
        out.append(int(sum(env[s].nbytes for s in dict.fromkeys(plan_["carry"][k]))))
    return out


def check_profiles(tiers: List[Tier], stages: int, branches: int) -> None:
    """A tier's own profile times every stage and branch of the model (checked before anything is measured)."""
    for tier in tiers:
        for key, have, want in (("stages", tier.stage_seconds, stages), ("branches", tier.branch_seconds, branches)):
            if have is not None and len(have) != want:
                raise ConfigError(f"tier {tier.name!r}: its profile lists {len(have)} {key}, the model has {want}")


def _simulate(run_dir: RunDir, images: np.ndarray, inputs: SplitInputs, best: Any, tiers: List[Tier],
              links: List[Link]) -> Dict[str, Any]:
    """The recommended placement run as processes; measured against the plan at the simulated samples' exits
    (tiers faster than this machine cannot be emulated: they run at its speed, and the plan is priced so)."""
    result = simulate(run_dir.file("tiers"), images)
    taken = np.bincount(result["exits"], minlength=len(inputs.stage_seconds)) / len(result["exits"])
    emulated = [Tier(t.name, min(t.speed, 1.0), t.stage_seconds, t.branch_seconds) for t in tiers]
    same = SplitInputs(inputs.stage_seconds, inputs.branch_seconds, inputs.cut_bytes, reach_of(list(taken)),
                       inputs.active)
    predicted = expected_latency(best.owner, same, emulated, links).latency
    ratio = result["trimmed_mean"] / predicted
    log.info("Simulated %d samples: measured %.3f ms per sample (fastest 95%%; mean %.3f, median %.3f), planned "
             "%.3f ms for these samples' exits: %.2f of the plan (%s the %d%% tolerance)", result["samples"],
             1e3 * result["trimmed_mean"], 1e3 * result["mean"], 1e3 * result["median"], 1e3 * predicted, ratio,
             "within" if abs(ratio - 1) <= TOLERANCE else "outside", int(100 * TOLERANCE))
    return {"measured_trimmed_mean": result["trimmed_mean"], "measured_mean": result["mean"],
            "measured_median": result["median"], "planned": predicted, "ratio": ratio, "samples": result["samples"]}
