"""The manifests of multi-exit exports: the one module that names, writes, reads back and checks them.

The directory written by ``distill_ee.early_exit.onnx_export.export_onnx`` holds one ONNX file per stage,
branch and fused exit, ``backbone.onnx`` (the whole network without exits, for comparison) and
``manifest.json``::

    {"format": "distill_ee.multi_exit.onnx", "version": 2,
     "exit_names": [...], "final_name": "final", "criteria": [...], "leave": [...], "thresholds": [...],
     "input_shape": [1, 28, 28], "num_classes": 10, "dtype": "float32",
     "plan": {"num_slots", "inputs", "outputs", "attach", "carry", "free", "result"},
     "stages": ["stage0.onnx", ...], "branches": ["branch0.onnx", ...],
     "exits": ["exit0.onnx", ...], "backbone": "backbone.onnx"}

Stage ``k`` reads inputs named ``slot{i}`` for ``i`` in ``plan.inputs[k]`` and writes ``slot{j}`` for ``j`` in
``plan.outputs[k]``; a branch reads ``features`` and writes ``logits``. ``exit{k}.onnx`` is stage ``k``, branch
``k`` and the exit's criterion's score in one graph (outputs: the stage's slots, ``logits``, ``score``), so that
real early exit pays one call per exit; ``leave[k]`` names the rule of ``distill_ee.leave_rules`` that decides
from that score and ``thresholds[k]`` (the criterion's own name is for people: the runtime never reads it).
Version 1 exports (decided by criterion name) are refused with a line saying to export again.

The manifest owns the export's thresholds: ``MultiExitSession`` reads them from here, ``set_thresholds``
changes them (checked) and ``write`` stores the manifest atomically. The TorchScript export
(``distill_ee.early_exit.export``) writes its manifest under the same file name with its own format.
Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..atomic import atomic_write_json
from ..errors import CheckpointError, ThresholdError
from ..leave_rules import LEAVE_RULES
from ..registry import suggest
from ..exit_settings import ExitOutputs, ThresholdArg, resolve_thresholds

#: the file name of every export's manifest
MANIFEST = "manifest.json"
#: the ONNX export's format and the version this runtime reads
FORMAT = "distill_ee.multi_exit.onnx"
VERSION = 2
#: the TorchScript export's format and version
TORCHSCRIPT_FORMAT = "distill_ee.multi_exit"
TORCHSCRIPT_VERSION = 1
PLAN_KEYS = ("num_slots", "inputs", "outputs", "attach", "carry", "free", "result")


class ManifestError(CheckpointError):
    """A manifest that cannot be run: its file, the key and what is wrong, on one line."""


@dataclass
class Manifest(ExitOutputs):
    """A checked manifest: files resolved against its directory; the owner of the export's thresholds."""

    directory: Path
    exit_names: List[str]
    final_name: str
    criteria: List[str]
    #: per exit: the leave rule its score is decided by
    leave: List[str]
    thresholds: List[Optional[float]]
    input_shape: List[int]
    num_classes: int
    plan: Dict[str, Any]
    stages: List[Path]
    branches: List[Path]
    exits: List[Path]
    backbone: Optional[Path]
    raw: Dict[str, Any]

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.directory / MANIFEST

    def set_thresholds(self, thresholds: ThresholdArg) -> None:
        """Replace thresholds: a list in exit order or a mapping exit name -> threshold (others kept)."""
        values = resolve_thresholds(self.exit_names, self.thresholds, thresholds)
        for k, t in enumerate(values):
            if t is not None and not _finite_number(t):
                raise ThresholdError(f"threshold {k} must be a finite number or None, got {t!r}")
        self.thresholds = [None if t is None else float(t) for t in values]

    def to_json(self) -> Dict[str, Any]:
        """The manifest as written: what was read, with the current thresholds."""
        return {**self.raw, "thresholds": list(self.thresholds)}

    def write(self, directory: Optional[Union[str, Path]] = None) -> Path:
        """Store the manifest (current thresholds included) atomically in its directory (or ``directory``)."""
        path = Path(directory) / MANIFEST if directory is not None else self.path
        atomic_write_json(path, self.to_json())
        return path


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    if raw.get("version") == 1:
        raise fail("version", "written by an earlier distill_ee (version 1, decided by criterion name); export the "
                              "checkpoint again with --ee-export onnx")
    if raw.get("version") != VERSION:
        raise fail("version", f"this runtime reads version {VERSION}, got {raw.get('version')!r}")
    names = _names(raw, "exit_names", fail)
    n = len(names)
    final = raw.get("final_name")
    if not isinstance(final, str) or not final:
        raise fail("final_name", f"must be a non-empty name, got {final!r}")
    criteria = _list(raw, "criteria", n, fail)
    for k, c in enumerate(criteria):
        if not isinstance(c, str) or not c:
            raise fail(f"criteria[{k}]", f"must be a criterion's name, got {c!r}")
    leave = _list(raw, "leave", n, fail)
    for k, rule in enumerate(leave):
        if not isinstance(rule, str) or rule not in LEAVE_RULES:
            hint = suggest(str(rule), LEAVE_RULES)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise fail(f"leave[{k}]", f"unknown leave rule {rule!r}{did} (valid: {', '.join(LEAVE_RULES)})")
    thresholds = _list(raw, "thresholds", n, fail)
    for k, t in enumerate(thresholds):
        if t is not None and not _finite_number(t):
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
    exits = [_file(directory, f, f"exits[{k}]", fail) for k, f in enumerate(_list(raw, "exits", n, fail))]
    backbone = _file(directory, raw["backbone"], "backbone", fail) if raw.get("backbone") is not None else None
    thresholds = [None if t is None else float(t) for t in thresholds]
    return Manifest(directory, names, final, criteria, list(leave), thresholds,
                    list(shape), classes, plan, stages, branches, exits, backbone, dict(raw))


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
