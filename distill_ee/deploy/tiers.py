"""Multi-tier inference (device, edge, cloud): placing the stages of a multi-exit model, and running the plan.

A placement gives every stage to a tier, in order (tier 0 holds the input; a tier may run nothing). The
expected latency per sample of a placement is

    sum_k reach_k * (t(stage k) + t(branch k)) on its tier + sum of transfers,

where ``reach_k`` is the share of samples still running at stage ``k`` (one minus those that left at earlier
exits), a tier's time is this machine's measured time divided by the tier's speed (or the tier's own measured
profile), and moving on from tier ``i`` to tier ``j`` before stage ``k`` costs ``reach_k`` times the latency
plus ``bytes_k / bandwidth`` of every link in between, ``bytes_k`` being the activations that stage ``k`` and
the stages after it still need (dtype-aware). ``plan`` ranks every placement.

``write_tiers`` writes one deployable file per tier (a zip of its stages' ONNX files and their slice of the
manifest) and ``placement.json``; ``simulate`` runs the tiers as separate processes joined by pipes, each link
emulated by sleeping its latency and the bytes it carries over its bandwidth, a slower tier by sleeping the
difference, and measures the latency of each sample. Nothing here imports torch.
"""
from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_path, atomic_write_json
from ..leave_rules import LEAVE_RULES
from ..errors import ConfigError
from ..extras import require
from ..file_names import name_problem
from ..input_files import TEXT_LIMIT, InputFileError, read_input
from .manifest import Manifest, ManifestError

PLACEMENT = "placement.json"
#: the samples a simulation runs first, not counted (the first calls of a session are slow)
WARMUP = 5
#: what one simulated sample costs beyond the plan (pipes, process switches), for the time budget
SAMPLE_OVERHEAD = 2e-3
#: the longest simulation ``check_simulation`` lets start
SIMULATION_BUDGET = 300.0
#: how long the tier processes may take to start (importing ONNX Runtime, loading their files)
START_TIMEOUT = 120.0
#: the most placements a plan ranks (each tier a contiguous run of stages: they grow combinatorially)
MAX_PLACEMENTS = 200_000


@dataclass
class Tier:
    """A machine: its speed relative to this one, or its own measured seconds per stage and branch."""

    name: str
    speed: float = 1.0
    stage_seconds: Optional[List[float]] = None
    branch_seconds: Optional[List[float]] = None

    def stage_time(self, k: int, measured: Sequence[float]) -> float:
        """Seconds per sample of stage ``k`` here."""
        return self.stage_seconds[k] if self.stage_seconds is not None else measured[k] / self.speed

    def branch_time(self, k: int, measured: Sequence[float]) -> float:
        """Seconds per sample of branch ``k`` here."""
        return self.branch_seconds[k] if self.branch_seconds is not None else measured[k] / self.speed


@dataclass
class Link:
    """The connection from one tier to the next: bytes per second and seconds of latency."""

    bandwidth: float
    latency: float

    def seconds(self, nbytes: float) -> float:
        """Time to carry ``nbytes``."""
        return self.latency + nbytes / self.bandwidth


@dataclass
class SplitInputs:
    """What the planner measures: per stage and branch seconds on this machine, the bytes that cross a cut
    before each stage (the input before stage 0), the share of samples reaching each stage, active exits."""

    stage_seconds: List[float]
    branch_seconds: List[float]
    cut_bytes: List[int]
    reach: List[float]
    active: List[bool]


@dataclass
class Placement:
    """Tier index per stage, and its expected latency per sample split into compute and transfer."""

    owner: List[int]
    latency: float = 0.0
    compute: float = 0.0
    transfer: float = 0.0
    per_tier: Dict[str, float] = field(default_factory=dict)

    def stages_of(self, tier: int) -> List[int]:
        """The stages tier ``tier`` runs."""
        return [k for k, t in enumerate(self.owner) if t == tier]

    def describe(self, tiers: Sequence[Tier]) -> str:
        """``device: 0-1 | edge: - | cloud: 2`` style."""
        parts = []
        for i, tier in enumerate(tiers):
            mine = self.stages_of(i)
            parts.append(f"{tier.name}: {_ranges(mine)}")
        return " | ".join(parts)


def _ranges(stages: List[int]) -> str:
    if not stages:
        return "-"
    return str(stages[0]) if len(stages) == 1 else f"{stages[0]}-{stages[-1]}"


def expected_latency(owner: Sequence[int], inputs: SplitInputs, tiers: Sequence[Tier], links: Sequence[Link]
                     ) -> Placement:
    """The expected latency per sample of placing stage ``k`` on tier ``owner[k]``."""
    compute, transfer = 0.0, 0.0
    per_tier = {t.name: 0.0 for t in tiers}
    here = 0
    num_exits = len(inputs.branch_seconds)
    for k, tier in enumerate(owner):
        reach = inputs.reach[k]
        if tier > here:
            hop = sum(links[i].seconds(inputs.cut_bytes[k]) for i in range(here, tier))
            transfer += reach * hop
            here = tier
        t = tiers[tier].stage_time(k, inputs.stage_seconds)
        if k < num_exits and inputs.active[k]:
            t += tiers[tier].branch_time(k, inputs.branch_seconds)
        compute += reach * t
        per_tier[tiers[tier].name] += reach * t
    return Placement(list(owner), compute + transfer, compute, transfer, per_tier)


def plan(inputs: SplitInputs, tiers: Sequence[Tier], links: Sequence[Link]) -> List[Placement]:
    """Every placement of the stages on the tiers in order (each tier a contiguous run, possibly empty), fastest
    first."""
    stages = len(inputs.stage_seconds)
    if len(links) != len(tiers) - 1:
        raise ValueError(f"{len(tiers)} tiers need {len(tiers) - 1} links, got {len(links)}")
    count = math.comb(stages + len(tiers) - 1, len(tiers) - 1)
    if count > MAX_PLACEMENTS:
        raise ConfigError(f"{len(tiers)} tiers and {stages} stages make {count:,} placements to rank (at most "
                          f"{MAX_PLACEMENTS:,}): give fewer tiers")
    out = [expected_latency(owner, inputs, tiers, links)
           for owner in itertools.combinations_with_replacement(range(len(tiers)), stages)]
    return sorted(out, key=lambda p: (p.latency, p.owner))


def reach_of(taken: Sequence[float]) -> List[float]:
    """Share of samples reaching each stage from the shares leaving at each output (final last)."""
    out, left = [], 1.0
    for share in taken:
        out.append(max(left, 0.0))
        left -= share
    return out


# --------------------------------------------------------------------------- artifacts
def write_tiers(manifest: Manifest, placement: Placement, tiers: Sequence[Tier], links: Sequence[Link],
                directory: Union[str, Path]) -> List[Path]:
    """One zip per tier (its stages' and exits' ONNX files and ``tier.json``) and ``placement.json``."""
    for tier in tiers:
        problem = name_problem(tier.name)
        if problem:
            raise ConfigError(f"tier name {problem}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, tier in enumerate(tiers):
        stages = placement.stages_of(i)
        path = directory / f"tier{i}_{tier.name}.zip"
        files = []
        for k in stages:
            files.append(manifest.stages[k])
            if k < manifest.num_exits:
                files.append(manifest.exits[k])
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.name)
            z.writestr("tier.json", json.dumps({"tier": tier.name, "index": i, "stages": stages,
                                                "files": [f.name for f in files]}))
        written.append(path)
    raw = manifest.raw
    doc = {"exit_names": manifest.exit_names, "final_name": manifest.final_name, "criteria": manifest.criteria,
           "leave": manifest.leave, "thresholds": manifest.thresholds, "plan": manifest.plan,
           "input_shape": manifest.input_shape,
           "num_classes": manifest.num_classes, "owner": placement.owner, "expected_latency": placement.latency,
           "tiers": [asdict(t) for t in tiers], "links": [asdict(link) for link in links],
           "files": [p.name for p in written], "format": raw.get("format"), "version": raw.get("version")}
    written.append(atomic_write_json(directory / PLACEMENT, doc))
    return written


class TierRuntime:
    """The stages of one tier, run on one sample's slot table; exits decided here, the rest handed on."""

    def __init__(self, zip_path: Union[str, Path], placement: Dict[str, Any]):
        ort = require("onnxruntime", "running a placed tier")

        self.placement = placement
        self.plan = placement["plan"]
        self.criteria = placement["criteria"]
        self.rules = [LEAVE_RULES[name] for name in placement["leave"]]
        self.limits = [float("inf") if t is None else float(t) for t in placement["thresholds"]]
        self.num_exits = len(self.criteria)
        with zipfile.ZipFile(zip_path) as z:
            meta = json.loads(z.read("tier.json"))
            self.stages: List[int] = meta["stages"]
            self.sessions: Dict[str, Any] = {}
            for name in meta["files"]:
                data = z.read(name)
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self.sessions[name] = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(self, env: Dict[int, np.ndarray]) -> Tuple[str, Any]:
        """``("done", (logits, exit))`` when the sample leaves here, else ``("next", carried slots)``."""
        plan = self.plan
        self.compute = 0.0
        for k in self.stages:
            inputs = {f"slot{i}": env[i] for i in plan["inputs"][k]}
            active = k < self.num_exits and self.limits[k] != float("inf")
            name = f"exit{k}.onnx" if active and f"exit{k}.onnx" in self.sessions else f"stage{k}.onnx"
            t0 = time.perf_counter()
            outs = self.sessions[name].run(None, inputs)
            self.compute += time.perf_counter() - t0
            for slot, value in zip(plan["outputs"][k], outs):
                env[slot] = value
            if k == self.num_exits:
                return "done", (outs[0], k)
            if name.startswith("exit"):
                logits, score = outs[-2], outs[-1]
                if self.rules[k].leaves(score, self.limits[k], {})[0]:
                    return "done", (logits, k)
        last = self.stages[-1]
        return "next", {s: env[s] for s in plan["carry"][last]}


def pause(seconds: float) -> None:
    """Wait ``seconds`` precisely: sleep most of it, then spin to the deadline (a sleep overshoots by tens of
    microseconds, which would swamp the short waits that emulate a slower tier)."""
    deadline = time.perf_counter() + seconds
    if seconds > 0.002:
        time.sleep(seconds - 0.001)
    while time.perf_counter() < deadline:
        pass


def _serve(zip_path: str, placement: Dict[str, Any], speed: float, inbox: Any, outbox: Any, link: Optional[Link],
           results: Any) -> None:
    """A tier's process: receive a sample, run its stages (slowed to ``speed``), report or hand it on."""
    runtime = TierRuntime(zip_path, placement) if zip_path else None
    results.put(("ready", None, None))
    while True:
        message = inbox.recv()
        if message is None:
            if outbox is not None:
                outbox.send(None)
            return
        sample, env, start = message
        if start is None:  # the sample reaches the first tier: its latency starts here
            start = time.perf_counter()
        if runtime is None or not runtime.stages:
            status, payload = "next", env
        else:
            status, payload = runtime.run(env)
            if speed != 1.0:  # the stages' own time, as a tier that much slower would take it
                pause(runtime.compute / speed - runtime.compute)
        if status == "done":
            results.put(("done", sample, (time.perf_counter() - start, int(payload[1]))))
            continue
        nbytes = sum(int(v.nbytes) for v in payload.values())
        pause(link.seconds(nbytes))  # the link: its latency and the bytes over its bandwidth
        outbox.send((sample, payload, start))


def simulation_seconds(latency: float, samples: int, warmup: int = WARMUP) -> float:
    """About how long simulating ``samples`` (and the warm-up) takes at an expected ``latency`` per sample."""
    return (samples + min(warmup, samples)) * (latency + SAMPLE_OVERHEAD)


def check_simulation(latency: float, samples: int, budget: float = SIMULATION_BUDGET) -> None:
    """ConfigError when simulating ``samples`` at ``latency`` per sample would take longer than ``budget``."""
    seconds = simulation_seconds(latency, samples)
    if seconds > budget:
        raise ConfigError(f"--simulate {samples}: the placement's expected latency of {1e3 * latency:.1f} ms per "
                          f"sample would make the simulation take about {seconds:.0f} s (at most {budget:.0f} s): "
                          f"simulate fewer samples, or check the tiers' speeds and the links' figures")


def sample_timeout(latency: float) -> float:
    """How long one sample's answer is waited for: many times the plan's latency, so that a loaded machine does not
    turn a valid simulation into an error, and never less than half a minute."""
    return max(30.0, 20.0 * latency + 10.0)


def simulate(directory: Union[str, Path], inputs: np.ndarray, timeout: Optional[float] = None,
             warmup: int = WARMUP) -> Dict[str, Any]:
    """Run ``placement.json``'s tiers as processes on this machine, one sample at a time; the measured latency
    per sample (from its arrival at the first tier to its answer at the tier where it leaves: mean, median, and
    the mean of the fastest 95%, which leaves out the stalls a shared machine's scheduler adds), each sample's
    latency and the exit it took, and the plan's prediction. ``timeout`` (seconds per answer) defaults to one scaled to the
    plan's latency; a tier process that dies is reported at once."""
    directory = Path(directory)
    path = directory / PLACEMENT
    try:
        placement = json.loads(read_input(str(path), "placement", TEXT_LIMIT))
    except InputFileError as err:
        raise ManifestError(f"{path}: cannot be read ({err.reason})") from None
    except ValueError as err:
        raise ManifestError(f"{path}: cannot be read ({err})") from None
    tiers = [Tier(**t) for t in placement["tiers"]]
    links = [Link(**link) for link in placement["links"]]
    if timeout is None:
        timeout = sample_timeout(float(placement["expected_latency"]))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pipes = [ctx.Pipe(duplex=False) for _ in tiers]  # pipes[i]: into tier i
    procs = []
    for i, tier in enumerate(tiers):
        zip_path = str(directory / placement["files"][i])
        outbox = pipes[i + 1][1] if i + 1 < len(tiers) else None
        link = links[i] if i < len(links) else None
        speed = tier.speed if tier.stage_seconds is None else 1.0
        procs.append(ctx.Process(target=_serve, daemon=True, args=(
            zip_path, placement, speed, pipes[i][0], outbox, link, results)))
    for p in procs:
        p.start()
    try:
        for _ in procs:
            _expect(results, "ready", max(timeout, START_TIMEOUT), procs)
        latencies, exits = [], []
        for n in range(-min(warmup, inputs.shape[0]), inputs.shape[0]):  # the first calls of a session are slow
            x = np.ascontiguousarray(inputs[abs(n) if n < 0 else n:][:1], dtype=np.float32)
            pipes[0][1].send((n, {0: x}, None))
            _, sample, (latency, exit_index) = _expect(results, "done", timeout, procs)
            if n >= 0:
                latencies.append(latency)
                exits.append(exit_index)
        pipes[0][1].send(None)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    ordered = np.sort(np.asarray(latencies))
    kept = ordered[:max(1, int(np.ceil(0.95 * len(ordered))))]
    return {"mean": float(np.mean(latencies)), "median": float(np.median(latencies)),
            "trimmed_mean": float(kept.mean()), "exits": exits, "latencies": [float(t) for t in latencies],
            "predicted": float(placement["expected_latency"]), "samples": int(inputs.shape[0])}


def _expect(results: Any, kind: str, timeout: float, procs: Sequence[Any]) -> Tuple[Any, ...]:
    """The next message from the tiers, waited for up to ``timeout`` while every tier process lives."""
    import queue

    deadline = time.perf_counter() + timeout
    while True:
        try:
            message = results.get(timeout=min(1.0, max(deadline - time.perf_counter(), 0.01)))
            break
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                raise ManifestError(f"tier process {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
            if time.perf_counter() >= deadline:
                raise ManifestError(f"a tier process did not answer within {timeout:g} s") from None
    if message[0] != kind:
        raise ManifestError(f"unexpected message from a tier: {message[0]!r}")
    return message
