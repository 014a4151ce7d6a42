"""Real early exit on ONNX Runtime: one session per stage, branch and fused exit, the batch shrinking as samples
leave.

The same algorithm as ``MultiExitModel.forward``: the stages run in order on a slot table; after each exit
the samples it lets go are written to the result and every value carried to later stages keeps only the rows
still running, so later stages really run on fewer samples; a batch of one returns at the first exit that
fires. Each exit's graph computes its criterion's score, and the manifest's leave rule decides from it (the
same rule PyTorch decides by, ``distill_ee.leave_rules``); the thresholds are the manifest's. Nothing is run
unverified: reading the manifest checks every file's SHA-256 and records against the plan, and every graph
loaded here is checked against its record (``Manifest.verify_graph``). Needs numpy and onnxruntime, not torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..extras import require
from ..leave_rules import LEAVE_RULES, State
from ..slots import shrink
from ..timing import median_time
from ..exit_settings import ThresholdArg
from .manifest import Manifest, ManifestError, read_manifest

ort = require("onnxruntime", "distill_ee.deploy (exported models on ONNX Runtime)")


def make_session(path: Path, threads: Optional[int] = None, label: Optional[str] = None) -> ort.InferenceSession:
    """A CPU inference session with every graph optimisation (``threads`` intra-op threads, default ORT's) whose
    idle threads sleep instead of spinning; ``label`` starts the line of a ManifestError (default: the path)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # a multi-exit model alternates between several sessions, each with its own thread pool: threads left
    # spinning after one session's call would take the cores from the next session's threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for a damaged or foreign file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ManifestError(f"{label or path}: ONNX Runtime cannot load it ({first})") from None


class MultiExitSession:
    """The exported multi-exit model on ONNX Runtime: ``(logits, exit_index) = session(x)``.

    ``source`` is an export directory or a ``Manifest`` already read (for one whose files were just written).
    """

    def __init__(self, source: Union[str, Path, Manifest], threads: Optional[int] = None):
        self.manifest: Manifest = source if isinstance(source, Manifest) else read_manifest(source)
        m = self.manifest
        self.plan = m.plan
        #: the input's numpy dtype: float32, or the integer dtype the model's input has (token ids)
        self._input_dtype = np.dtype("float32" if m.input_type == "float" else m.input_type)
        self._threads = threads
        self.stages = [self._load(p) for p in m.stages]
        self.branches = [self._load(p) for p in m.branches]
        self.exits = [self._load(p) for p in m.exits]
        self.criteria = list(m.criteria)
        self.rules = [LEAVE_RULES[name] for name in m.leave]
        self._stage_inputs = [[f"slot{i}" for i in ins] for ins in self.plan["inputs"]]
        self._stage_outputs = [[f"slot{j}" for j in outs] for outs in self.plan["outputs"]]
        self._exit_outputs = [[*names, "logits", "score"] for names in self._stage_outputs]
        self._backbone: Optional[ort.InferenceSession] = None
        if m.backbone is not None:
            self._load(m.backbone)  # checked now, kept only once ``backbone`` is called (it doubles the weights)
        self._derive_limits()

    def _load(self, path: Path) -> ort.InferenceSession:
        """A session of ``path``, its graph's inputs and outputs checked against the manifest's record."""
        graph = make_session(path, self._threads, label=f"{self.manifest.path}: {path.name}")
        self.manifest.verify_graph(path, graph)
        return graph

    # ----------------------------------------------------------------- settings
    @property
    def exit_names(self) -> List[str]:
        """Exit names in depth order."""
        return list(self.manifest.exit_names)

    @property
    def output_names(self) -> List[str]:
        """Exit names and the final classifier's name."""
        return self.manifest.output_names

    @property
    def thresholds(self) -> List[Optional[float]]:
        """Per-exit thresholds, the manifest's (None: never taken, the branch is not run)."""
        return list(self.manifest.thresholds)

    def set_thresholds(self, thresholds: ThresholdArg) -> None:
        """Replace the manifest's thresholds: a list in exit order or a mapping exit name -> threshold
        (``session.manifest.write()`` stores them)."""
        self.manifest.set_thresholds(thresholds)
        self._derive_limits()

    def _derive_limits(self) -> None:
        thresholds = self.manifest.thresholds
        self._active = [t is not None or rule.stateful for t, rule in zip(thresholds, self.rules)]
        self._limits = [float("inf") if t is None else t for t in thresholds]

    # ----------------------------------------------------------------- running
    def run_stage(self, k: int, env: List[Any]) -> None:
        """Stage ``k`` on the slot table ``env`` (its outputs written into it)."""
        feeds = {name: env[i] for name, i in zip(self._stage_inputs[k], self.plan["inputs"][k])}
        for slot, value in zip(self.plan["outputs"][k], self.stages[k].run(self._stage_outputs[k], feeds)):
            env[slot] = value

    def run_branch(self, k: int, features: np.ndarray) -> np.ndarray:
        """Branch ``k``'s logits for its attach point's ``features``."""
        return self.branches[k].run(None, {"features": features})[0]

    def run_exit(self, k: int, env: List[Any]) -> Tuple[np.ndarray, np.ndarray]:
        """Stage ``k`` and its exit's fused graph on ``env``: (logits, the criterion's score)."""
        feeds = {name: env[i] for name, i in zip(self._stage_inputs[k], self.plan["inputs"][k])}
        *outs, logits, score = self.exits[k].run(self._exit_outputs[k], feeds)
        for slot, value in zip(self.plan["outputs"][k], outs):
            env[slot] = value
        return logits, score

    def _exit(self, k: int, env: List[Any], state: State) -> Tuple[np.ndarray, np.ndarray]:
        """Stage ``k`` and its exit: (logits, mask of the rows that leave)."""
        logits, score = self.run_exit(k, env)
        return logits, self.rules[k].leaves(score, self._limits[k], state)

    def simulate(self, x: np.ndarray) -> List[np.ndarray]:
        """Logits of every exit for every sample, the final classifier's last."""
        return self.simulate_scores(x)[0]

    def simulate_scores(self, x: np.ndarray) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """(logits of every exit for every sample, the final classifier's last; every exit's score), each exit
        computed by its fused graph."""
        env: List[Any] = [None] * self.plan["num_slots"]
        env[0] = np.ascontiguousarray(x, dtype=self._input_dtype)
        logits, scores = [], []
        for k in range(len(self.stages)):
            if k < self.manifest.num_exits:
                z, score = self.run_exit(k, env)
                logits.append(z)
                scores.append(score)
            else:
                self.run_stage(k, env)
        logits.append(env[self.plan["result"]])
        return logits, scores

    def decide(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """The exit each sample takes (final = number of exits) from every exit's scores, by the manifest's
        rules and thresholds: what real early exit takes."""
        n = scores[0].shape[0] if len(scores) else 0
        index = np.full(n, self.manifest.num_exits, dtype=np.int64)
        pending = np.ones(n, dtype=bool)
        state: State = {}
        for k, score in enumerate(scores):
            if not self._active[k]:
                continue
            take = self.rules[k].leaves(score, self._limits[k], state) & pending
            index[take] = k
            pending &= ~take
        return index

    def __call__(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Real early exit: (logits from the exit each sample took, that exit's index; final = number of exits)."""
        x = np.ascontiguousarray(x, dtype=self._input_dtype)
        if x.shape[0] == 1:
            return self._single(x)
        plan, n_exits = self.plan, self.manifest.num_exits
        env: List[Any] = [None] * plan["num_slots"]
        env[0] = x
        n = x.shape[0]
        logits_out: Optional[np.ndarray] = None
        index_out = np.full(n, n_exits, dtype=np.int64)
        alive = np.arange(n)
        state: State = {}
        for k in range(n_exits):
            if not self._active[k]:
                self.run_stage(k, env)
            else:
                logits, mask = self._exit(k, env, state)
                leaving = np.flatnonzero(mask)
                if leaving.size:
                    if logits_out is None:
                        logits_out = np.empty((n, logits.shape[1]), dtype=logits.dtype)
                    logits_out[alive[leaving]] = logits[leaving]
                    index_out[alive[leaving]] = k
                    if leaving.size == alive.size:
                        return logits_out, index_out
                    keep = np.flatnonzero(~mask)
                    alive = alive[keep]
                    shrink(env, plan["carry"][k], keep, _rows)
                    for key in state:
                        state[key] = state[key][keep]
            for slot in plan["free"][k]:
                env[slot] = None
        self.run_stage(n_exits, env)
        final = env[plan["result"]]
        if logits_out is None:
            return final, index_out
        logits_out[alive] = final
        return logits_out, index_out

    def _single(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        plan, n_exits = self.plan, self.manifest.num_exits
        env: List[Any] = [None] * plan["num_slots"]
        env[0] = x
        state: State = {}
        for k in range(n_exits):
            if not self._active[k]:
                self.run_stage(k, env)
                continue
            logits, mask = self._exit(k, env, state)
            if mask[0]:
                return logits, np.array([k], dtype=np.int64)
        self.run_stage(n_exits, env)
        return env[plan["result"]], np.array([n_exits], dtype=np.int64)

    # ----------------------------------------------------------------- the backbone, and timing
    def backbone(self, x: np.ndarray) -> np.ndarray:
        """The whole network without exits (``backbone.onnx``), for comparison."""
        if self._backbone is None:
            if self.manifest.backbone is None:
                raise ManifestError(f"{self.manifest.directory}: the export has no backbone.onnx")
            self._backbone = self._load(self.manifest.backbone)
        return self._backbone.run(None, {"input": np.ascontiguousarray(x, dtype=self._input_dtype)})[0]

    def prefix_times(self, x: np.ndarray, repeats: int = 5) -> List[float]:
        """Seconds per sample to reach each exit (its stages and the branches on the way), final last."""
        out = []
        for k in range(self.manifest.num_exits + 1):
            out.append(median_time(lambda: self.run_prefix(x, k), repeats) / x.shape[0])
        return out

    def run_prefix(self, x: np.ndarray, k: int) -> None:
        """Run the stages and branches up to exit ``k`` (the final classifier: every stage) on ``x``, for timing."""
        env: List[Any] = [None] * self.plan["num_slots"]
        env[0] = np.ascontiguousarray(x, dtype=self._input_dtype)
        for j in range(k + 1):
            if j < self.manifest.num_exits and (self._active[j] or j == k):
                self._exit(j, env, {})
            else:
                self.run_stage(j, env)


def _rows(value: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rows ``keep`` of ``value``, contiguous."""
    return np.ascontiguousarray(value[keep])
