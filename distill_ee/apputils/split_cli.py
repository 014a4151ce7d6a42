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
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tabulate import tabulate

from ..checkpoint import load_checkpoint, read_checkpoint
from ..deploy import MultiExitSession
from ..deploy.profile import profile_session
from ..deploy.tiers import Link, SplitInputs, Tier, expected_latency, plan, reach_of, simulate, write_tiers
from ..early_exit.exits import EarlyExits
from ..early_exit.onnx_export import export_onnx
from ..errors import ConfigError, DistillEEError
from ..schedule.source import ScheduleSource, decode_schedule, parse_yaml
from .args import OneLineErrorParser
from .datasets import dataset_info, load_dataset, make_loaders
from .models import create_model
from .run_dir import RunDir, setup_logging

log = logging.getLogger("distill_ee")
TIER_KEYS = ("name", "speed", "profile")
LINK_KEYS = ("bandwidth_mbps", "latency_ms")
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
        if not 0 <= args.simulate <= 10_000:
            raise ConfigError(f"--simulate takes 0 to 10000 images, got {args.simulate}")
        tiers, links = read_tiers(args.tiers)
        run(args, tiers, links)
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- the tier file
def read_tiers(path: str) -> Tuple[List[Tier], List[Link]]:
    """Tiers and links from a tier file; located errors."""
    try:
        data = open(path, "rb").read()
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    source = parse_yaml(decode_schedule(data, path), path)
    raw = source.data
    source.expect_keys([], raw, ("tiers", "links"), "a tier file is a mapping with `tiers` and `links`")
    items = raw.get("tiers")
    if not isinstance(items, list) or len(items) < 2:
        raise source.error(["tiers"], "give at least two tiers, the one holding the input first")
    tiers = [_tier(source, i, t) for i, t in enumerate(items)]
    names = [t.name for t in tiers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise source.error(["tiers", i, "name"], f"two tiers are named {name!r}")
    raw_links = raw.get("links")
    if not isinstance(raw_links, list) or len(raw_links) != len(tiers) - 1:
        raise source.error(["links"], f"{len(tiers)} tiers need {len(tiers) - 1} links (tier i to tier i+1), "
                                      f"got {len(raw_links) if isinstance(raw_links, list) else 'none'}")
    links = [_link(source, i, link) for i, link in enumerate(raw_links)]
    return tiers, links


def _number(source: ScheduleSource, where: List[Any], value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < 0 or (positive and value == 0):
        raise source.error(where, f"must be a finite number {'above' if positive else 'of at least'} 0, "
                                  f"got {value!r}")
    return float(value)


def _tier(source: ScheduleSource, i: int, raw: Any) -> Tier:
    where: List[Any] = ["tiers", i]
    what = "a tier is a mapping with `name` and `speed` (or `profile`)"
    source.expect_keys(where, raw, TIER_KEYS, what)
    if "name" not in raw:
        raise source.error(where, what)
    tier = Tier(str(raw["name"]))
    if "speed" in raw:
        tier.speed = _number(source, [*where, "speed"], raw["speed"], positive=True)
    profile = raw.get("profile")
    if profile is not None:
        if not isinstance(profile, dict) or set(profile) != {"stages", "branches"}:
            raise source.error([*where, "profile"], "a profile is {stages: [seconds...], branches: [seconds...]}")
        for key in ("stages", "branches"):
            values = profile[key]
            if not isinstance(values, list):
                raise source.error([*where, "profile", key], "a list of seconds per sample")
            attr = "stage_seconds" if key == "stages" else "branch_seconds"
            setattr(tier, attr, [_number(source, [*where, "profile", key, j], v, positive=False)
                                 for j, v in enumerate(values)])
    return tier


def _link(source: ScheduleSource, i: int, raw: Any) -> Link:
    where: List[Any] = ["links", i]
    source.expect_keys(where, raw, LINK_KEYS, "a link is {bandwidth_mbps: ..., latency_ms: ...}")
    for key in LINK_KEYS:
        if key not in raw:
            raise source.error(where, f"a link needs `{key}`")
    bandwidth = _number(source, [*where, "bandwidth_mbps"], raw["bandwidth_mbps"], positive=True)
    latency = _number(source, [*where, "latency_ms"], raw["latency_ms"], positive=False)
    return Link(bandwidth * 1e6 / 8.0, latency / 1e3)


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
    _, valid, _ = make_loaders(load_dataset(dataset, args.data), 256)
    if valid is None:
        raise ConfigError("the exit rates are measured on the validation split, and the dataset has none")
    run_dir = RunDir(args.out_dir, args.name)
    setup_logging(run_dir.log_file)
    multi = exits.multi_exit_model().eval()
    export_onnx(multi, model, run_dir.file("onnx"))
    session = MultiExitSession(run_dir.file("onnx"), threads=1)
    images = torch.cat([x for x, _ in valid])
    inputs = _measure(exits, session, images, valid, tiers)
    placements = plan(inputs, tiers, links)
    _check_profiles(tiers, inputs)
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


def _check_profiles(tiers: List[Tier], inputs: SplitInputs) -> None:
    for tier in tiers:
        for key, have, want in (("stages", tier.stage_seconds, len(inputs.stage_seconds)),
                                ("branches", tier.branch_seconds, len(inputs.branch_seconds))):
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
