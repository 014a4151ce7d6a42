"""The manifests of multi-exit exports: the one module that names, writes, reads back and checks them.

The directory written by ``distill_ee.early_exit.onnx_export.export_onnx`` holds one ONNX file per stage,
branch and fused exit, ``backbone.onnx`` (the whole network without exits, for comparison) and
``manifest.json``::

    {"format": "distill_ee.multi_exit.onnx", "version": 3,
     "exit_names": [...], "final_name": "final", "criteria": [...], "leave": [...], "thresholds": [...],
     "input_shape": [1, 28, 28], "num_classes": 10, "dtype": "float32",
     "plan": {"num_slots", "inputs", "outputs", "attach", "carry", "free", "result"},
     "stages": ["stage0.onnx", ...], "branches": ["branch0.onnx", ...],
     "exits": ["exit0.onnx", ...], "backbone": "backbone.onnx",
     "files": {"stage0.onnx": {"sha256": "...", "inputs": [{"name": "slot0", "type": "float",
                                                            "shape": [null, 1, 28, 28]}], "outputs": [...]}, ...}}

Stage ``k`` reads inputs named ``slot{i}`` for ``i`` in ``plan.inputs[k]`` and writes ``slot{j}`` for ``j`` in
``plan.outputs[k]``; a branch reads ``features`` and writes ``logits``. ``exit{k}.onnx`` is stage ``k``, branch
``k`` and the exit's criterion's score in one graph (outputs: the stage's slots, ``logits``, ``score``), so that
real early exit pays one call per exit; ``leave[k]`` names the rule of ``distill_ee.leave_rules`` that decides
from that score and ``thresholds[k]`` (the criterion's own name is for people: the runtime never reads it).
Versions 1 (decided by criterion name) and 2 (no record of the files) are refused with a line saying to export
again.

The export directory is verified, not trusted: ``files`` records, for every file the manifest names, its
SHA-256 and its graph's inputs and outputs (name, element type, shape with ``null`` for a dynamic axis such as
the batch). ``check_manifest`` bounds the sizes (``MAX_EXITS``, ``MAX_SLOTS``) before anything is allocated,
checks the plan's dataflow (every slot read is the input or written by an earlier stage and not yet freed,
written once, carried while a later stage reads it; ``plan.attach[k]`` an output of stage ``k``,
``plan.result`` one of the last stage with ``num_classes`` values per sample), checks every record against
the plan (the names each role reads and writes, one type and shape per slot across the files) and every
file's SHA-256; ``Manifest.verify_graph`` checks a loaded graph against its record. Every problem is one
``ManifestError`` line that starts with the manifest's path.

The manifest owns the export's thresholds: ``MultiExitSession`` reads them from here, ``set_thresholds``
changes them (checked) and ``write`` stores the manifest atomically; ``write_manifest`` records the files of a
new export and writes its manifest. The TorchScript export (``distill_ee.early_exit.export``) writes its
manifest under the same file name with its own format. Nothing here imports torch; ``describe_onnx`` alone
needs onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from ..atomic import atomic_write_json
from ..errors import CheckpointError, ThresholdError
from ..extras import require
from ..input_files import DATA_LIMIT, InputFileError, decode_text, read_input
from ..leave_rules import LEAVE_RULES
from ..registry import suggest
from ..exit_settings import ExitOutputs, ThresholdArg, resolve_thresholds

#: the file name of every export's manifest
MANIFEST = "manifest.json"
#: the ONNX export's format and the version this runtime reads
FORMAT = "distill_ee.multi_exit.onnx"
VERSION = 3
#: what the earlier versions lacked, for the line that refuses them
EARLIER_VERSIONS = {1: "decided by criterion name", 2: "without a record of its files"}
#: bounds checked before anything is allocated from a manifest's numbers
MAX_EXITS = 256
MAX_SLOTS = 4096
MAX_RANK = 64
#: the largest ONNX file read: one protobuf message cannot be larger
MAX_FILE = 2 << 30
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
    #: file name -> its SHA-256 and its graph's inputs and outputs (the manifest's ``files``)
    records: Dict[str, Dict[str, Any]]
    raw: Dict[str, Any]

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.directory / MANIFEST

    @property
    def input_type(self) -> str:
        """The input's element type as ONNX names it (``float``; an integer input's ``int64`` ...)."""
        return input_type(self.raw)

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

    def verify_graph(self, path: Path, graph: Any) -> None:
        """ManifestError unless ``graph`` (an ONNX Runtime session of ``path``) has the recorded inputs and
        outputs."""
        record, actual = self.records[path.name], signature(graph)
        for side in ("inputs", "outputs"):
            if actual[side] != record[side]:
                raise ManifestError(f"{self.path}: {path.name}: its graph's {side} ({_show(actual[side])}) differ "
                                    f"from the manifest's record ({_show(record[side])})")


def _finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


# --------------------------------------------------------------------------- describing and writing
def describe_onnx(path: Union[str, Path]) -> Dict[str, Any]:
    """The record of an ONNX file: its SHA-256 and its graph's inputs and outputs (name, type, shape)."""
    ort = require("onnxruntime", "describing an exported ONNX file")  # writers only: reading needs no ORT

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    graph = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {"sha256": file_sha256(path), **signature(graph)}


def signature(graph: Any) -> Dict[str, List[Dict[str, Any]]]:
    """The inputs and outputs of an ONNX Runtime session as a manifest records them."""
    return {"inputs": [_describe_value(v) for v in graph.get_inputs()],
            "outputs": [_describe_value(v) for v in graph.get_outputs()]}


def _describe_value(arg: Any) -> Dict[str, Any]:
    """An ONNX Runtime ``NodeArg`` as a record: ``tensor(float)`` is ``float``; a symbolic dimension is None."""
    kind = str(arg.type)
    if kind.startswith("tensor(") and kind.endswith(")"):
        kind = kind[len("tensor("):-1]
    shape = [d if isinstance(d, int) and not isinstance(d, bool) else None for d in (arg.shape or [])]
    return {"name": str(arg.name), "type": kind, "shape": shape}


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 (hex digits) of the regular file at ``path``, read in chunks (OSError for any other)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError("not a regular file")
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def named_files(raw: Dict[str, Any]) -> List[str]:
    """The file names a manifest names: stages, branches, exits, then the backbone."""
    names = [*raw.get("stages", []), *raw.get("branches", []), *raw.get("exits", [])]
    return names + ([raw["backbone"]] if raw.get("backbone") is not None else [])


def add_records(raw: Dict[str, Any], directory: Union[str, Path]) -> Dict[str, Any]:
    """``raw`` with ``files`` recomputed: the record (``describe_onnx``) of every file it names in
    ``directory``."""
    return {**raw, "files": {name: describe_onnx(Path(directory) / name) for name in named_files(raw)}}


def write_manifest(raw: Dict[str, Any], directory: Union[str, Path]) -> Path:
    """Record every file ``raw`` names, check the result as a reader will, and write it atomically; the path."""
    directory = Path(directory)
    return check_manifest(add_records(raw, directory), directory, str(directory / MANIFEST)).write()


# --------------------------------------------------------------------------- reading and checking
def read_manifest(directory: Union[str, Path]) -> Manifest:
    """The manifest of an export directory, checked with every file it names; ManifestError (one line that
    starts with the manifest's path) when it cannot be run."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        text = decode_text(read_input(str(path), "manifest", DATA_LIMIT), str(path), "manifest")
    except InputFileError as err:
        raise ManifestError(str(err)) from None
    return check_manifest(_parse(text, path), directory, str(path))


def _parse(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}:{err.lineno}: not JSON ({err.msg}, column {err.colno})") from None
    except (ValueError, RecursionError) as err:  # a number with too many digits, arrays nested too deeply
        raise ManifestError(f"{path}: not JSON ({_first_line(err)})") from None


def check_manifest(raw: Any, directory: Path, where: str) -> Manifest:
    """``raw`` (the parsed JSON) checked key by key, then its plan's dataflow, its records and its files."""
    def fail(key: str, message: str) -> ManifestError:
        return ManifestError(f"{where}: {key}: {message}")

    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a manifest is a JSON object, got {type(raw).__name__}")
    _check_version(raw, fail)
    names, final, criteria, leave, thresholds = _exit_fields(raw, fail)
    n = len(names)
    shape = raw.get("input_shape")
    if (not isinstance(shape, list) or not 0 < len(shape) < MAX_RANK
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise fail("input_shape", f"must be a list of positive sizes, got {_brief(shape)}")
    classes = raw.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise fail("num_classes", f"must be a positive integer, got {_brief(classes)}")
    plan = _plan(raw.get("plan"), n, fail)
    keyed = _files(raw, directory, n, fail)
    files = {role: [path for key, path in keyed if key.startswith(role)] for role in ("stages", "branches", "exits")}
    backbone = next((path for key, path in keyed if key == "backbone"), None)
    records = _records(raw.get("files"), [path.name for _, path in keyed], fail)
    _check_wiring(plan, {role: [p.name for p in paths] for role, paths in files.items()},
                  backbone.name if backbone else None, records, [None, *shape], classes, fail,
                  _input_type(raw, fail))
    _check_hashes([path for _, path in keyed], records, fail)
    return Manifest(directory, names, final, criteria, leave, thresholds, list(shape), classes, plan,
                    files["stages"], files["branches"], files["exits"], backbone, records, dict(raw))


#: the integer input dtypes a manifest may record (``input_dtype``; absent: a float input)
INTEGER_INPUTS = ("int64", "int32", "int16", "int8", "uint8")


def input_type(raw: Dict[str, Any]) -> str:
    """The element type of the input of the manifest ``raw``: its ``input_dtype``, or ``float``."""
    return str(raw.get("input_dtype") or "float")


def _input_type(raw: Dict[str, Any], fail: Callable[[str, str], ManifestError]) -> str:
    dtype = raw.get("input_dtype")
    if dtype is not None and dtype not in INTEGER_INPUTS:
        raise fail("input_dtype", f"must be one of {', '.join(INTEGER_INPUTS)} (or absent: float), got "
                                  f"{_brief(dtype)}")
    return input_type(raw)


def _check_version(raw: Dict[str, Any], fail: Callable[[str, str], ManifestError]) -> None:
    if raw.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {_brief(raw.get('format'))} (a TorchScript export is read "
                             f"by distill_ee.early_exit.export.load_exported)")
    version = raw.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version in EARLIER_VERSIONS:
        raise fail("version", f"written by an earlier distill_ee (version {version}, {EARLIER_VERSIONS[version]}); "
                              f"export the checkpoint again with --ee-export onnx")
    if version != VERSION or isinstance(version, bool):
        raise fail("version", f"this runtime reads version {VERSION}, got {_brief(version)}")


def _exit_fields(raw: Dict[str, Any], fail: Any) -> Tuple[List[str], str, List[str], List[str],
                                                           List[Optional[float]]]:
    """Exit names, the final classifier's name, and per exit its criterion, leave rule and threshold."""
    names = _names(raw, "exit_names", fail)
    n = len(names)
    final = raw.get("final_name")
    if not isinstance(final, str) or not final:
        raise fail("final_name", f"must be a non-empty name, got {_brief(final)}")
    if final in names:
        raise fail("final_name", f"{_brief(final)} is also an exit's name")
    criteria = _list(raw, "criteria", n, fail)
    for k, c in enumerate(criteria):
        if not isinstance(c, str) or not c:
            raise fail(f"criteria[{k}]", f"must be a criterion's name, got {_brief(c)}")
    leave = _list(raw, "leave", n, fail)
    for k, rule in enumerate(leave):
        if not isinstance(rule, str) or rule not in LEAVE_RULES:
            hint = suggest(str(rule)[:100], LEAVE_RULES)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise fail(f"leave[{k}]", f"unknown leave rule {_brief(rule)}{did} (valid: {', '.join(LEAVE_RULES)})")
    thresholds = _list(raw, "thresholds", n, fail)
    for k, t in enumerate(thresholds):
        if t is not None and not _finite_number(t):
            raise fail(f"thresholds[{k}]", f"must be a finite number or null, got {_brief(t)}")
    return names, final, criteria, leave, [None if t is None else float(t) for t in thresholds]


def _names(raw: Dict[str, Any], key: str, fail: Any) -> List[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(key, f"must be a list of names, got {_brief(value)}")
    if len(value) > MAX_EXITS:
        raise fail(key, f"at most {MAX_EXITS} exits, got {len(value)}")
    seen: Set[str] = set()
    for v in value:
        if v in seen:
            raise fail(key, f"{_brief(v)} is named twice")
        seen.add(v)
    return list(value)


def _list(raw: Dict[str, Any], key: str, length: int, fail: Any) -> List[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise fail(key, f"must be a list, got {type(value).__name__}")
    if len(value) != length:
        per = "one per exit, and the final stage" if key == "stages" else "one per exit"
        raise fail(key, f"must have {length} entries ({per}), got {len(value)}")
    return list(value)


# --------------------------------------------------------------------------- the plan
def _plan(value: Any, num_exits: int, fail: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise fail("plan", f"must be an object with {', '.join(PLAN_KEYS)}")
    for key in PLAN_KEYS:
        if key not in value:
            raise fail(f"plan.{key}", "missing")
    slots = value["num_slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise fail("plan.num_slots", f"must be a positive integer, got {_brief(slots)}")
    if slots > MAX_SLOTS:
        raise fail("plan.num_slots", f"at most {MAX_SLOTS} slots, got {slots}")

    def slot(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < slots:
            raise fail(key, f"slot {_brief(v)} is not in 0..{slots - 1}")
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
    plan = {key: value[key] for key in PLAN_KEYS}
    _check_dataflow(plan, fail)
    return plan


def _check_dataflow(plan: Dict[str, Any], fail: Any) -> None:
    """Every slot a stage reads is live (the input, or written by an earlier stage and not freed since); every
    slot is written once; attach and result are outputs of their stage; carry and free name live slots, once."""
    last = len(plan["inputs"]) - 1
    written, live, freed = {0}, {0}, {}
    for k in range(last + 1):
        for key in ("inputs", "outputs"):
            _check_distinct(plan[key][k], f"plan.{key}[{k}]", fail)
        for i in plan["inputs"][k]:
            if i in freed:
                raise fail(f"plan.inputs[{k}]", f"slot {i} is read after plan.free[{freed[i]}] frees it")
            if i not in written:
                raise fail(f"plan.inputs[{k}]", f"slot {i} is read before any stage writes it")
        for j in plan["outputs"][k]:
            if j in written:
                raise fail(f"plan.outputs[{k}]", "slot 0 is the input: no stage writes it" if j == 0 else
                           f"slot {j} is written twice")
        written.update(plan["outputs"][k])
        live.update(plan["outputs"][k])
        if k == last:
            break
        if plan["attach"][k] not in plan["outputs"][k]:
            raise fail(f"plan.attach[{k}]", f"slot {plan['attach'][k]} is not an output of stage {k}")
        for key in ("carry", "free"):
            _check_distinct(plan[key][k], f"plan.{key}[{k}]", fail)  # a slot carried twice would shrink twice
            for v in plan[key][k]:
                if v not in live:
                    raise fail(f"plan.{key}[{k}]", f"slot {v} is not live after stage {k}")
        for v in plan["free"][k]:
            live.discard(v)
            freed[v] = k
    if plan["result"] not in plan["outputs"][last]:
        raise fail("plan.result", f"slot {plan['result']} is not an output of the last stage (plan.outputs[{last}] "
                                  f"is {plan['outputs'][last]})")


def _check_distinct(slots: Sequence[int], key: str, fail: Any) -> None:
    if len(set(slots)) != len(slots):
        twice = next(s for s in slots if list(slots).count(s) > 1)
        raise fail(key, f"slot {twice} is listed twice")


# --------------------------------------------------------------------------- the files and their records
def _files(raw: Dict[str, Any], directory: Path, n: int, fail: Any) -> List[Any]:
    """(key, path) of every file the manifest names, each a distinct regular file in ``directory``."""
    keyed = []
    for role, length in (("stages", n + 1), ("branches", n), ("exits", n)):
        keyed += [(f"{role}[{k}]", _file(directory, f, f"{role}[{k}]", fail))
                  for k, f in enumerate(_list(raw, role, length, fail))]
    if raw.get("backbone") is not None:
        keyed.append(("backbone", _file(directory, raw["backbone"], "backbone", fail)))
    seen: Dict[str, str] = {}
    for key, path in keyed:
        if path.name in seen:
            raise fail(key, f"{path.name} is also {seen[path.name]}: every file has one role")
        seen[path.name] = key
    for key, path in keyed:
        if path.name != canonical_name(key):
            raise fail(key, f"must be {canonical_name(key)}, the name the export gives it, got {path.name}")
    return keyed


def canonical_name(key: str) -> str:
    """The file name the export gives a role: ``stages[1]`` is ``stage1.onnx``, ``backbone`` ``backbone.onnx``
    (two branches of one shape could otherwise trade places unseen)."""
    role, _, index = key.partition("[")
    return f"{_FILE_PREFIX[role]}{index[:-1]}.onnx" if index else f"{role}.onnx"


_FILE_PREFIX = {"stages": "stage", "branches": "branch", "exits": "exit"}


def _file(directory: Path, name: Any, key: str, fail: Any) -> Path:
    if (not isinstance(name, str) or not name or not name.isprintable() or Path(name).name != name
            or name in (".", "..")):
        raise fail(key, f"must be a file name in the export directory, got {_brief(name)}")
    path = directory / name
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise fail(key, f"{name} is not in {directory}") from None
    except OSError as err:
        raise fail(key, f"{name} cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise fail(key, f"{name} is not a regular file")
    if info.st_size > MAX_FILE:
        raise fail(key, f"{name} is larger than {MAX_FILE >> 30} GiB: not one ONNX file")
    return path


def _records(value: Any, names: List[str], fail: Any) -> Dict[str, Dict[str, Any]]:
    """The manifest's ``files``: one well-formed record per file it names, and no other."""
    if not isinstance(value, dict):
        raise fail("files", "must map every file the manifest names to its record (sha256, inputs, outputs)")
    for name in value:
        if name not in names:
            raise fail("files", f"records {_brief(name)}, a file the manifest does not name")
    missing = [name for name in names if name not in value]
    if missing:
        raise fail("files", f"no record of {missing[0]}")
    return {name: _record(value[name], f"files.{name}", fail) for name in names}


def _record(value: Any, key: str, fail: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(key, "must be an object with sha256, inputs and outputs")
    digest = value.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise fail(f"{key}.sha256", f"must be 64 lowercase hex digits, got {_brief(digest)}")
    return {"sha256": digest, "inputs": _values(value.get("inputs"), f"{key}.inputs", fail),
            "outputs": _values(value.get("outputs"), f"{key}.outputs", fail)}


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _values(value: Any, key: str, fail: Any) -> List[Dict[str, Any]]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_SLOTS + 2:
        raise fail(key, f"must list the graph's values (1 to {MAX_SLOTS + 2}), got {_brief(value)}")
    out = []
    for i, v in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(v, dict):
            raise fail(where, f"must be an object with name, type and shape, got {_brief(v)}")
        for field in ("name", "type"):
            if not isinstance(v.get(field), str) or not v[field]:
                raise fail(f"{where}.{field}", f"must be a non-empty string, got {_brief(v.get(field))}")
        shape = v.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape)):
            raise fail(f"{where}.shape", f"must be a list of sizes or null (at most {MAX_RANK}), got {_brief(shape)}")
        out.append(_value_key(v))
    return out


def _value_key(v: Dict[str, Any]) -> Dict[str, Any]:
    return {"name": v["name"], "type": v["type"], "shape": list(v["shape"])}


# --------------------------------------------------------------------------- records against the plan
def _check_wiring(plan: Dict[str, Any], files: Dict[str, List[str]], backbone: Optional[str],
                  records: Dict[str, Dict[str, Any]], input_shape: List[Optional[int]], classes: int,
                  fail: Any, input_kind: str = "float") -> None:
    """Every record against the plan: the names each file reads and writes, one type and shape per slot in
    every file that reads or writes it, logits of ``classes`` values, a batch axis on every carried slot."""
    produced = {0: ({"name": "slot0", "type": input_kind, "shape": input_shape}, "input_shape")}
    for k, name in enumerate(files["stages"]):
        record = records[name]
        _expect_names(record, _slot_names(plan["inputs"][k]), _slot_names(plan["outputs"][k]),
                      f"stages[{k}]", name, fail)
        for i, value in zip(plan["inputs"][k], record["inputs"]):
            _expect_like(value, *produced[i], f"stages[{k}]", name, fail)
        for j, value in zip(plan["outputs"][k], record["outputs"]):
            produced[j] = (value, name)
    for k, name in enumerate(files["exits"]):
        stage = records[files["stages"][k]]
        record = records[name]
        _expect_names(record, _names_of(stage["inputs"]), [*_names_of(stage["outputs"]), "logits", "score"],
                      f"exits[{k}]", name, fail)
        for value, want in zip(record["inputs"] + record["outputs"], stage["inputs"] + stage["outputs"]):
            _expect_like(value, want, files["stages"][k], f"exits[{k}]", name, fail)
        _expect_logits(record["outputs"][-2], classes, f"exits[{k}]", name, fail)
        if len(record["outputs"][-1]["shape"]) != 1:
            raise fail(f"exits[{k}]", f"{name}'s score must be one number per sample, its record's shape is "
                                      f"{_shape(record['outputs'][-1]['shape'])}")
    for k, name in enumerate(files["branches"]):
        record = records[name]
        _expect_names(record, ["features"], ["logits"], f"branches[{k}]", name, fail)
        _expect_like(record["inputs"][0], *produced[plan["attach"][k]], f"branches[{k}]", name, fail)
        _expect_logits(record["outputs"][0], classes, f"branches[{k}]", name, fail)
    if backbone is not None:
        _expect_names(records[backbone], ["input"], ["logits"], "backbone", backbone, fail)
        _expect_like(records[backbone]["inputs"][0], *produced[0], "backbone", backbone, fail)
        _expect_logits(records[backbone]["outputs"][0], classes, "backbone", backbone, fail)
    result, source = produced[plan["result"]]
    _expect_logits(result, classes, "plan.result", source, fail)
    _check_carried(plan, {slot: value for slot, (value, _) in produced.items()}, fail)


def _check_carried(plan: Dict[str, Any], produced: Dict[int, Dict[str, Any]], fail: Any) -> None:
    """After each exit, every slot a later stage reads keeps the rows of the samples that go on (it is carried)
    when it has a batch axis, and only such slots are carried."""
    def batched(slot: int) -> bool:
        shape = produced[slot]["shape"]
        return bool(shape) and shape[0] is None

    for k, carry in enumerate(plan["carry"]):
        for slot in carry:
            if not batched(slot):
                shape = _shape(produced[slot]["shape"])
                raise fail(f"plan.carry[{k}]", f"slot {slot} has no batch axis (shape {shape}): its rows cannot "
                                               f"follow the samples")
        written = {0}.union(*plan["outputs"][:k + 1])
        for later in range(k + 1, len(plan["inputs"])):
            for slot in plan["inputs"][later]:
                if slot in written and batched(slot) and slot not in carry:
                    raise fail(f"plan.carry[{k}]", f"slot {slot}, read by stage {later}, is not carried: its rows "
                                                   f"would not follow the samples that go on after exit {k}")


def _slot_names(slots: Sequence[int]) -> List[str]:
    return [f"slot{s}" for s in slots]


def _names_of(values: Sequence[Dict[str, Any]]) -> List[str]:
    return [v["name"] for v in values]


def _expect_names(record: Dict[str, Any], inputs: List[str], outputs: List[str], key: str, name: str,
                  fail: Any) -> None:
    got_in, got_out = _names_of(record["inputs"]), _names_of(record["outputs"])
    if got_in != inputs or got_out != outputs:
        raise fail(key, f"{name} reads {_brief(got_in)} and writes {_brief(got_out)} (its record); the plan "
                        f"wants {_brief(inputs)} and {_brief(outputs)}")


def _expect_like(value: Dict[str, Any], want: Dict[str, Any], source: str, key: str, name: str, fail: Any) -> None:
    """``value`` (read or written by ``name``) has the type and shape of ``want`` (from ``source``); a dynamic
    dimension matches any."""
    same = (value["type"] == want["type"] and len(value["shape"]) == len(want["shape"])
            and all(a is None or b is None or a == b for a, b in zip(value["shape"], want["shape"])))
    if not same:
        raise fail(key, f"{name}'s {value['name']!r} is {_typed(value)} but {source} gives {_typed(want)}")


def _expect_logits(value: Dict[str, Any], classes: int, key: str, name: str, fail: Any) -> None:
    shape = value["shape"]
    if value["type"] != "float" or len(shape) != 2 or shape[-1] != classes:
        raise fail(key, f"{name}'s {value['name']!r} is {_typed(value)}, not the float logits of {classes} classes "
                        f"(num_classes) per sample")


def _check_hashes(paths: List[Path], records: Dict[str, Dict[str, Any]], fail: Any) -> None:
    for path in paths:
        try:
            digest = file_sha256(path)
        except OSError as err:
            raise fail(path.name, f"cannot be read ({err.strerror or err})") from None
        if digest != records[path.name]["sha256"]:
            raise fail(path.name, "its SHA-256 differs from the manifest's (the file was replaced or damaged after "
                                  "the export)")


# --------------------------------------------------------------------------- messages
def _shape(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _typed(value: Dict[str, Any]) -> str:
    return f"{_brief(value['type'])} {_shape(value['shape'])}"


def _show(values: Sequence[Dict[str, Any]]) -> str:
    text = ", ".join(f"{v['name']!r}: {_typed(v)}" for v in values)
    return text if len(text) <= 240 else text[:237] + "..."


def _brief(value: Any) -> str:
    """``repr(value)``, one line, at most 80 characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__
