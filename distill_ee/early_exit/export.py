"""TorchScript export of a MultiExitModel: one file per stage and branch plus a JSON manifest.

The directory holds ``stage0.pt .. stageK.pt``, ``branch0.pt .. branch{K-1}.pt``, ``decider{k}.pt`` for exits
decided by a learned decider, and ``manifest.json`` (exit names, criteria, thresholds and the slot plan that
wires the stages). ``load_exported`` rebuilds a
MultiExitModel around the loaded modules, so the exported model keeps real early exit (shrinking batch,
batch-1 fast path) and needs neither the model's Python class nor the schedule.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

from ..atomic import atomic_write_json
from ..deploy.manifest import MANIFEST, TORCHSCRIPT_FORMAT, TORCHSCRIPT_VERSION
from ..errors import CheckpointError, DistillEEError
from ..input_files import DATA_LIMIT, InputFileError, read_input
from ..inputs import InputSpec, InputSpecError, spec_from_record
from ..modules import eval_mode, example_input
from .collaboration import takes_previous
from .criteria import get_criterion
from .multi_exit import MultiExitModel
from .staging import StagePlan


def prepare_export(multi: MultiExitModel, directory: Union[str, Path]) -> Tuple[Path, list, list]:
    """(directory, made; each stage's example arguments; each branch's), refusing what no export runs."""
    if any(takes_previous(b) for b in multi.branches):
        raise DistillEEError("exits with forward_transfer read the previous exit's logits, which the exported "
                             "runtime does not pass; export a model without forward_transfer")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stage_args, branch_args = _example_arguments(multi)
    return directory, stage_args, branch_args


def export_torchscript(multi: MultiExitModel, directory: Union[str, Path]) -> List[Path]:
    """Write every stage and branch of ``multi`` as TorchScript plus the manifest; returns the written paths."""
    directory, stage_args, branch_args = prepare_export(multi, directory)
    written: List[Path] = []
    files: Dict[str, List[str]] = {"stages": [], "branches": []}
    methods: List[str] = []
    with eval_mode(multi):
        for kind, modules, args in (("stage", multi.stages, stage_args), ("branch", multi.branches, branch_args)):
            key = "stages" if kind == "stage" else "branches"
            for k, (module, example) in enumerate(zip(modules, args)):
                scripted, how = _to_torchscript(module, example)
                path = directory / f"{kind}{k}.pt"
                scripted.save(str(path))
                files[key].append(path.name)
                methods.append(f"{path.name}: {how}")
                written.append(path)
    files["deciders"] = {}
    with eval_mode(multi):
        for k, criterion in enumerate(multi.criteria):
            if criterion.learned:
                scripted, how = _to_torchscript(criterion.decider, (torch.zeros(2, multi.num_classes),))
                path = directory / f"decider{k}.pt"
                scripted.save(str(path))
                files["deciders"][str(k)] = path.name
                methods.append(f"{path.name}: {how}")
                written.append(path)
    manifest = {"format": TORCHSCRIPT_FORMAT, "version": TORCHSCRIPT_VERSION, **multi.describe(), **files,
                "torchscript": methods}
    written.append(atomic_write_json(directory / MANIFEST, manifest))
    return written


def load_exported(directory: Union[str, Path]) -> MultiExitModel:
    """A MultiExitModel (in eval mode) running the TorchScript files written by ``export_torchscript``."""
    directory = Path(directory)
    try:
        manifest = json.loads(read_input(str(directory / MANIFEST), "manifest", DATA_LIMIT))
    except InputFileError as err:
        raise CheckpointError(f"{directory}: no readable {MANIFEST} ({err.reason})") from None
    except ValueError as err:
        raise CheckpointError(f"{directory}: no readable {MANIFEST} ({err})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{directory}: {MANIFEST} is not a JSON object")
    if manifest.get("format") != TORCHSCRIPT_FORMAT or manifest.get("version") != TORCHSCRIPT_VERSION:
        raise CheckpointError(f"{directory}: not a TorchScript multi-exit export of version {TORCHSCRIPT_VERSION}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stages = [torch.jit.load(str(directory / f), map_location="cpu") for f in manifest["stages"]]
        branches = [torch.jit.load(str(directory / f), map_location="cpu") for f in manifest["branches"]]
        deciders = {int(k): torch.jit.load(str(directory / f), map_location="cpu")
                    for k, f in manifest.get("deciders", {}).items()}
    criteria = [get_criterion(c) for c in manifest["criteria"]]
    for k, criterion in enumerate(criteria):
        if criterion.learned:
            if k not in deciders:
                raise CheckpointError(f"{directory}: exit {k} is decided by a {criterion.name} decider, which the "
                                      "export lacks")
            criteria[k] = criterion.bind(deciders[k])
    multi = MultiExitModel(stages, branches, StagePlan.from_dict(manifest["plan"]),
                           exit_names=manifest["exit_names"], final_name=manifest["final_name"],
                           criteria=criteria, thresholds=manifest["thresholds"],
                           input_shape=_manifest_input(manifest, directory), num_classes=manifest["num_classes"])
    return multi.eval()


def _manifest_input(manifest: Dict[str, Any], directory: Path) -> InputSpec:
    """The input a TorchScript manifest records; CheckpointError naming the file when it cannot be one."""
    try:
        return spec_from_record(manifest)
    except InputSpecError as err:
        raise CheckpointError(f"{directory / MANIFEST}: input: {err}") from None


def _example_arguments(multi: MultiExitModel) -> tuple:
    """The arguments each stage and branch receives on a small dummy batch."""
    plan = multi.plan
    env: List[Any] = [None] * plan.num_slots
    env[0] = example_input(multi, multi.input_spec, batch=2)
    stage_args, branch_args = [], []
    with eval_mode(multi), torch.no_grad():
        for k, stage in enumerate(multi.stages):
            args = tuple(env[i] for i in plan.inputs[k])
            stage_args.append(args)
            for slot, value in zip(plan.outputs[k], stage(*args)):
                env[slot] = value
            if k < plan.num_exits:
                branch_args.append((env[plan.attach[k]],))
    return stage_args, branch_args


def _to_torchscript(module: nn.Module, example: Sequence[Any]) -> tuple:
    """``torch.jit.script`` when the module is scriptable, else ``torch.jit.trace`` on ``example``."""
    with warnings.catch_warnings():
        # torch.jit warns that it is deprecated and about GraphModule internals it does not script
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(module), "script"
        except Exception:  # scripting fails on many Python constructs; tracing covers the rest
            with torch.no_grad():
                return torch.jit.trace(module, tuple(example), check_trace=False), "trace"
