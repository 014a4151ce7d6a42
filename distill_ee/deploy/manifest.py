"""The manifest of an ONNX multi-exit export: what ``manifest.json`` holds, read back and checked.

The directory written by ``distill_ee.early_exit.onnx_export.export_onnx`` holds one ONNX file per stage,
branch and learned decider, ``backbone.onnx`` (the whole network without exits, for comparison) and
``manifest.json``::

    {"format": "distill_ee.multi_exit.onnx", "version": 1,
     "exit_names": [...], "final_name": "final", "criteria": [...], "thresholds": [...],
     "input_shape": [1, 28, 28], "num_classes": 10, "dtype": "float32",
     "plan": {"num_slots", "inputs", "outputs", "attach", "carry", "free", "result"},
     "stages": ["stage0.onnx", ...], "branches": ["branch0.onnx", ...], "deciders": {"0": "decider0.onnx"},
     "exits": ["exit0.onnx", ...], "backbone": "backbone.onnx"}

Stage ``k`` reads inputs named ``slot{i}`` for ``i`` in ``plan.inputs[k]`` and writes ``slot{j}`` for ``j`` in
``plan.outputs[k]``; a branch reads ``features`` and writes ``logits``; a decider reads ``logits`` and writes
``leave`` (the probability of leaving). ``exit{k}.onnx`` is stage ``k``, branch ``k`` and the number the
criterion compares with the threshold in one graph (outputs: the stage's slots, ``logits``, ``score``), so that
real early exit pays one call per exit. Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = "distill_ee.multi_exit.onnx"
VERSION = 1
#: the criteria the runtime computes itself (learned ones run their decider file)
RULE_CRITERIA = ("entropy", "max_prob", "margin", "patience")
LEARNED_CRITERIA = ("gate", "learned")
PLAN_KEYS = ("num_slots", "inputs", "outputs", "attach", "carry", "free", "result")


class ManifestError(CheckpointError):
    """A manifest that cannot be run: its file, the key and what is wrong, on one line."""


@dataclass
class Manifest:
    """A checked manifest: files resolved against its directory."""

    directory: Path
    exit_names: List[str]
    final_name: str
    criteria: List[str]
    thresholds: List[Optional[float]]
    input_shape: List[int]
    num_classes: int
    plan: Dict[str, Any]
    stages: List[Path]
    branches: List[Path]
    deciders: Dict[int, Path]
    backbone: Optional[Path]
    raw: Dict[str, Any]
    #: per exit: stage, branch and the criterion's score in one file (None: run stage and branch apart)
    exits: Optional[List[Path]] = None

    @property
    def num_exits(self) -> int:
        """Number of early exits."""
        return len(self.exit_names)

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's."""
        return [*self.exit_names, self.final_name]


def write_thresholds(directory: Union[str, Path], thresholds: List[Optional[float]]) -> None:
    """Store new thresholds (one per exit) in an export's manifest, atomically."""
    import os
    import tempfile

    path = Path(directory) / MANIFEST
    raw = json.loads(path.read_text())
    if len(thresholds) != len(raw.get("exit_names", [])):
        raise ManifestError(f"{path}: need {len(raw.get('exit_names', []))} thresholds, got {len(thresholds)}")
    raw["thresholds"] = [None if t is None else float(t) for t in thresholds]
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=MANIFEST, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(raw, f, indent=2)
    os.replace(tmp, path)


def read_manifest(directory: Union[str, Path]) -> Manifest:
    """The manifest of an export directory, checked; ManifestError (located) when it cannot be run."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise ManifestError(f"{path}: cannot be read ({err.strerror or err})") from None
    except ValueError as err:
        raise ManifestError(f"{path}: not JSON ({err})") from None
    return check_manifest(raw, directory, str(path))


def check_manifest(raw: Any, directory: Path, where: str) -> Manifest:
    """``raw`` (the parsed JSON) checked key by key."""
    def fail(key: str, message: str) -> ManifestError:
        return ManifestError(f"{where}: {key}: {message}")

    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a manifest is a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {raw.get('format')!r} (a TorchScript export is read by "
                             f"distill_ee.early_exit.export.load_exported)")
    if raw.get("version") != VERSION:
        raise fail("version", f"this runtime reads version {VERSION}, got {raw.get('version')!r}")
    names = _names(raw, "exit_names", fail)
    n = len(names)
    final = raw.get("final_name")
    if not isinstance(final, str) or not final:
        raise fail("final_name", f"must be a non-empty name, got {final!r}")
    criteria = _list(raw, "criteria", n, fail)
    for k, c in enumerate(criteria):
        if c not in RULE_CRITERIA + LEARNED_CRITERIA:
            valid = ", ".join(RULE_CRITERIA + LEARNED_CRITERIA)
            raise fail(f"criteria[{k}]", f"unknown criterion {c!r} (valid: {valid})")
    thresholds = _list(raw, "thresholds", n, fail)
    for k, t in enumerate(thresholds):
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise fail(f"thresholds[{k}]", f"must be a finite number or null, got {t!r}")
    shape = raw.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise fail("input_shape", f"must be a list of positive sizes, got {shape!r}")
    classes = raw.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise fail("num_classes", f"must be a positive integer, got {classes!r}")
    plan = _plan(raw.get("plan"), n, fail)
    stages = [_file(directory, f, f"stages[{k}]", fail) for k, f in enumerate(_list(raw, "stages", n + 1, fail))]
    branches = [_file(directory, f, f"branches[{k}]", fail) for k, f in enumerate(_list(raw, "branches", n, fail))]
    deciders = _deciders(raw.get("deciders", {}), criteria, directory, fail)
    backbone = _file(directory, raw["backbone"], "backbone", fail) if raw.get("backbone") is not None else None
    exits = None
    if raw.get("exits") is not None:
        exits = [_file(directory, f, f"exits[{k}]", fail) for k, f in enumerate(_list(raw, "exits", n, fail))]
    return Manifest(directory, names, final, criteria, [None if t is None else float(t) for t in thresholds],
                    list(shape), classes, plan, stages, branches, deciders, backbone, raw, exits)


def _names(raw: Dict[str, Any], key: str, fail: Any) -> List[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(key, f"must be a list of names, got {value!r}")
    return list(value)


def _list(raw: Dict[str, Any], key: str, length: int, fail: Any) -> List[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise fail(key, f"must be a list, got {type(value).__name__}")
    if len(value) != length:
        per = "one per exit, and the final stage" if key == "stages" else "one per exit"
        raise fail(key, f"must have {length} entries ({per}), got {len(value)}")
    return list(value)


def _plan(value: Any, num_exits: int, fail: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise fail("plan", f"must be an object with {', '.join(PLAN_KEYS)}")
    for key in PLAN_KEYS:
        if key not in value:
            raise fail(f"plan.{key}", "missing")
    slots = value["num_slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise fail("plan.num_slots", f"must be a positive integer, got {slots!r}")

    def slot(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < slots:
            raise fail(key, f"slot {v!r} is not in 0..{slots - 1}")
        return v

    for key, length in (("inputs", num_exits + 1), ("outputs", num_exits + 1), ("carry", num_exits),
                        ("free", num_exits)):
        lists = value[key]
        if not isinstance(lists, list) or len(lists) != length or not all(isinstance(x, list) for x in lists):
            raise fail(f"plan.{key}", f"must be {length} lists of slots")
        for i, entry in enumerate(lists):
            for j, v in enumerate(entry):
                slot(v, f"plan.{key}[{i}][{j}]")
    attach = value["attach"]
    if not isinstance(attach, list) or len(attach) != num_exits:
        raise fail("plan.attach", f"must list {num_exits} slots (one per exit)")
    for k, v in enumerate(attach):
        slot(v, f"plan.attach[{k}]")
    slot(value["result"], "plan.result")
    return dict(value)


def _file(directory: Path, name: Any, key: str, fail: Any) -> Path:
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise fail(key, f"must be a file name in the export directory, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise fail(key, f"{name} is not in {directory}")
    return path


def _deciders(value: Any, criteria: List[str], directory: Path, fail: Any) -> Dict[int, Path]:
    if not isinstance(value, dict):
        raise fail("deciders", "must map exit index -> file")
    out: Dict[int, Path] = {}
    for key, name in value.items():
        if not str(key).isdigit() or int(key) >= len(criteria):
            raise fail(f"deciders.{key}", f"is not an exit index 0..{len(criteria) - 1}")
        out[int(key)] = _file(directory, name, f"deciders.{key}", fail)
    for k, c in enumerate(criteria):
        if c in LEARNED_CRITERIA and k not in out:
            raise fail("deciders", f"exit {k} is decided by a {c} decider, and no file is given for it")
    return out
