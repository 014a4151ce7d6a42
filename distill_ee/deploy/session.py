"""Real early exit on ONNX Runtime: one session per stage, branch and decider, the batch shrinking as samples leave.

The same algorithm as ``MultiExitModel.forward``: the stages run in order on a slot table; after each exit
the samples it lets go are written to the result and every value carried to later stages keeps only the rows
still running, so later stages really run on fewer samples; a batch of one returns at the first exit that
fires. Needs numpy and onnxruntime, not torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from .criteria import State, exit_mask, leaves
from .manifest import LEARNED_CRITERIA, Manifest, ManifestError, read_manifest
from .profile import typical_time


def make_session(path: Path, threads: Optional[int] = None) -> ort.InferenceSession:
    """A CPU inference session with every graph optimisation (``threads`` intra-op threads, default ORT's) whose
    idle threads sleep instead of spinning."""
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
        raise ManifestError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:200]})") from None


class MultiExitSession:
    """The exported multi-exit model on ONNX Runtime: ``(logits, exit_index) = session(x)``."""

    def __init__(self, directory: Union[str, Path], threads: Optional[int] = None):
        self.manifest: Manifest = read_manifest(directory)
        m = self.manifest
        self.plan = m.plan
        self.stages = [make_session(p, threads) for p in m.stages]
        self.branches = [make_session(p, threads) for p in m.branches]
        self.deciders = {k: make_session(p, threads) for k, p in m.deciders.items()}
        self.exits = [make_session(p, threads) for p in m.exits] if m.exits is not None else None
        self.criteria = list(m.criteria)
        self._stage_inputs = [[f"slot{i}" for i in ins] for ins in self.plan["inputs"]]
        self._stage_outputs = [[f"slot{j}" for j in outs] for outs in self.plan["outputs"]]
        self._exit_outputs = [[*names, "logits", "score"] for names in self._stage_outputs]
        self._backbone: Optional[ort.InferenceSession] = None
        self._threads = threads
        self.set_thresholds(m.thresholds)

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
        """Per-exit thresholds (None: never taken, the branch is not run)."""
        return list(self._thresholds)

    def set_thresholds(self, thresholds: Union[Sequence[Optional[float]], Mapping[str, Optional[float]]]) -> None:
        """Replace thresholds: a list in exit order or a mapping exit name -> threshold."""
        if isinstance(thresholds, Mapping):
            unknown = [n for n in thresholds if n not in self.exit_names]
            if unknown:
                raise ValueError(f"no exit named {unknown[0]!r} (exits: {', '.join(self.exit_names)})")
            thresholds = [thresholds.get(n, t) for n, t in zip(self.exit_names, self._thresholds)]
        if len(thresholds) != self.manifest.num_exits:
            raise ValueError(f"need {self.manifest.num_exits} thresholds, got {len(thresholds)}")
        self._thresholds = [None if t is None else float(t) for t in thresholds]
        self._active = [t is not None or c == "patience" for t, c in zip(self._thresholds, self.criteria)]
        self._limits = [float("inf") if t is None else t for t in self._thresholds]

    # ----------------------------------------------------------------- running
    def _stage(self, k: int, env: List[Any]) -> None:
        feeds = {name: env[i] for name, i in zip(self._stage_inputs[k], self.plan["inputs"][k])}
        for slot, value in zip(self.plan["outputs"][k], self.stages[k].run(self._stage_outputs[k], feeds)):
            env[slot] = value

    def _branch(self, k: int, features: np.ndarray) -> np.ndarray:
        return self.branches[k].run(None, {"features": features})[0]

    def _exit(self, k: int, env: List[Any], state: State) -> Tuple[np.ndarray, np.ndarray]:
        """Stage ``k`` and its exit: (logits, mask of the rows that leave)."""
        if self.exits is None:
            self._stage(k, env)
            logits = self._branch(k, env[self.plan["attach"][k]])
            return logits, self._mask(k, logits, state)
        feeds = {name: env[i] for name, i in zip(self._stage_inputs[k], self.plan["inputs"][k])}
        *outs, logits, score = self.exits[k].run(self._exit_outputs[k], feeds)
        for slot, value in zip(self.plan["outputs"][k], outs):
            env[slot] = value
        return logits, leaves(self.criteria[k], score, self._limits[k], state)

    def _mask(self, k: int, logits: np.ndarray, state: State) -> np.ndarray:
        if self.criteria[k] in LEARNED_CRITERIA:
            leave = self.deciders[k].run(None, {"logits": logits})[0].reshape(-1)
            return leave > self._limits[k]
        return exit_mask(self.criteria[k], logits, self._limits[k], state)

    def simulate(self, x: np.ndarray) -> List[np.ndarray]:
        """Logits of every exit for every sample, the final classifier's last."""
        env: List[Any] = [None] * self.plan["num_slots"]
        env[0] = np.ascontiguousarray(x, dtype=np.float32)
        out = []
        for k in range(len(self.stages)):
            self._stage(k, env)
            if k < self.manifest.num_exits:
                out.append(self._branch(k, env[self.plan["attach"][k]]))
        out.append(env[self.plan["result"]])
        return out

    def __call__(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Real early exit: (logits from the exit each sample took, that exit's index; final = number of exits)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
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
                self._stage(k, env)
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
                    _shrink(env, plan["carry"][k], keep)
                    for key in state:
                        state[key] = state[key][keep]
            for slot in plan["free"][k]:
                env[slot] = None
        self._stage(n_exits, env)
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
                self._stage(k, env)
                continue
            logits, mask = self._exit(k, env, state)
            if mask[0]:
                return logits, np.array([k], dtype=np.int64)
        self._stage(n_exits, env)
        return env[plan["result"]], np.array([n_exits], dtype=np.int64)

    # ----------------------------------------------------------------- the backbone, and timing
    def backbone(self, x: np.ndarray) -> np.ndarray:
        """The whole network without exits (``backbone.onnx``), for comparison."""
        if self._backbone is None:
            if self.manifest.backbone is None:
                raise ManifestError(f"{self.manifest.directory}: the export has no backbone.onnx")
            self._backbone = make_session(self.manifest.backbone, self._threads)
        return self._backbone.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def prefix_times(self, x: np.ndarray, repeats: int = 5) -> List[float]:
        """Seconds per sample to reach each exit (its stages and the branches on the way), final last."""
        out = []
        for k in range(self.manifest.num_exits + 1):
            out.append(typical_time(lambda: self._prefix(x, k), repeats) / x.shape[0])
        return out

    def _prefix(self, x: np.ndarray, k: int) -> None:
        env: List[Any] = [None] * self.plan["num_slots"]
        env[0] = np.ascontiguousarray(x, dtype=np.float32)
        for j in range(k + 1):
            if j < self.manifest.num_exits and (self._active[j] or j == k):
                self._exit(j, env, {})
            else:
                self._stage(j, env)


def _shrink(env: List[Any], slots: Sequence[int], keep: np.ndarray) -> None:
    """Keep rows ``keep`` of every carried value (a value held in two slots is selected once)."""
    done: Dict[int, np.ndarray] = {}
    for slot in slots:
        value = env[slot]
        key = id(value)
        if key not in done:
            done[key] = np.ascontiguousarray(value[keep])
        env[slot] = done[key]
