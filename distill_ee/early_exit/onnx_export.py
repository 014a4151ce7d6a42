"""ONNX export of a MultiExitModel: every stage, branch and learned decider with a dynamic batch axis.

``export_onnx(multi, model, directory)`` writes the files ``distill_ee.deploy.MultiExitSession`` runs (see
``distill_ee.deploy.manifest`` for the layout) with torch's ``torch.export``-based exporter; the TorchScript
exporter it replaces is deprecated upstream. ``backbone.onnx`` is the network without exits, the baseline
real early exit is compared with.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

from ..deploy.manifest import FORMAT, MANIFEST, VERSION
from ..dynamic import static_compute
from ..errors import DistillEEError
from ..modules import eval_mode, example_input
from .deciders import LearnedCriterion
from .export import _write_json, prepare_export
from .multi_exit import MultiExitModel

#: the opset written (ONNX Runtime 1.17 and later read it)
OPSET = 18


class _Backbone(nn.Module):
    """The model's own forward (exits are not run by it) with every routed block running."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final classifier's logits."""
        return self.model(x)


def export_onnx(multi: MultiExitModel, model: nn.Module, directory: Union[str, Path]) -> List[Path]:
    """Write ``multi``'s stages, branches and deciders, the backbone and the manifest; the written paths."""
    directory, stage_args, branch_args = prepare_export(multi, directory)
    plan = multi.plan
    written: List[Path] = []
    files: Dict[str, Any] = {"stages": [], "branches": [], "deciders": {}}
    with eval_mode(multi), static_compute(model):
        for k, (stage, args) in enumerate(zip(multi.stages, stage_args)):
            path = directory / f"stage{k}.onnx"
            _export(stage, args, path, [f"slot{i}" for i in plan.inputs[k]], [f"slot{j}" for j in plan.outputs[k]])
            files["stages"].append(path.name)
            written.append(path)
        for k, (branch, args) in enumerate(zip(multi.branches, branch_args)):
            path = directory / f"branch{k}.onnx"
            _export(branch, args, path, ["features"], ["logits"])
            files["branches"].append(path.name)
            written.append(path)
        files["exits"] = []
        for k, (stage, branch, args) in enumerate(zip(multi.stages, multi.branches, stage_args)):
            path = directory / f"exit{k}.onnx"
            _export(_ExitStep(stage, branch, multi.criteria[k], plan.outputs[k].index(plan.attach[k])), args, path,
                    [f"slot{i}" for i in plan.inputs[k]], [*(f"slot{j}" for j in plan.outputs[k]), "logits", "score"])
            files["exits"].append(path.name)
            written.append(path)
        for k, criterion in enumerate(multi.criteria):
            if isinstance(criterion, LearnedCriterion):
                path = directory / f"decider{k}.onnx"
                _export(_Leave(criterion.decider), (torch.zeros(2, multi.num_classes),), path, ["logits"], ["leave"])
                files["deciders"][str(k)] = path.name
                written.append(path)
        path = directory / "backbone.onnx"
        _export(_Backbone(model), (example_input(multi, multi.input_shape, batch=2),), path, ["input"], ["logits"])
        files["backbone"] = path.name
        written.append(path)
    manifest = {"format": FORMAT, "version": VERSION, **multi.describe(), **files, "dtype": "float32",
                "opset": OPSET}
    written.append(_write_json(directory / MANIFEST, manifest))
    return written


class _ExitStep(nn.Module):
    """Stage ``k``, its exit's branch and the number its criterion compares with the threshold, in one graph
    (one ONNX Runtime call per exit on the way): the stage's outputs, the logits and the score."""

    def __init__(self, stage: nn.Module, branch: nn.Module, criterion: Any, attach: int):
        super().__init__()
        self.stage = stage
        self.branch = branch
        self.decider = criterion.decider if isinstance(criterion, LearnedCriterion) else None
        self.kind = criterion.name
        self.attach = attach

    def forward(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(stage outputs..., logits, score)."""
        outs = tuple(self.stage(*args))
        logits = self.branch(outs[self.attach])
        return (*outs, logits, exit_score(self.kind, logits, self.decider))


def exit_score(kind: str, logits: torch.Tensor, decider: Any = None) -> torch.Tensor:
    """What the runtime compares with the threshold: entropy (leave below), max probability or margin (leave at
    or above), the prediction (patience counts agreements) or the decider's probability of leaving (above)."""
    if kind == "entropy":
        return -(torch.softmax(logits, dim=1) * torch.log_softmax(logits, dim=1)).sum(dim=1)
    if kind == "max_prob":
        return torch.softmax(logits, dim=1).amax(dim=1)
    if kind == "margin":
        if logits.shape[1] < 2:
            return torch.ones(logits.shape[0])
        top = torch.softmax(logits, dim=1).topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    if kind == "patience":
        return logits.argmax(dim=1)
    return decider(logits).reshape(-1)


class _Leave(nn.Module):
    """A learned decider's probability of leaving, as the runtime reads it."""

    def __init__(self, decider: nn.Module):
        super().__init__()
        self.decider = decider

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(N,) probabilities."""
        return self.decider(logits).reshape(-1)


def _export(module: nn.Module, args: Sequence[Any], path: Path, inputs: List[str], outputs: List[str]) -> None:
    """One module to ONNX with a dynamic batch axis on every input; progress messages and warnings silenced."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic: Any = tuple({0: batch} for _ in args)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        dynamic = (dynamic,)  # torch.export sees ``*args`` as one argument
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, tuple(args), dynamo=True, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=dynamic, opset_version=OPSET, verbose=False)
        except Exception as err:  # the exporter raises many types; the model is what the user must change
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise DistillEEError(f"ONNX export of {path.stem} failed: {first}") from None
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            program.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
