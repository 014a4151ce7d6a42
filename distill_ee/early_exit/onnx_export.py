"""ONNX export of a MultiExitModel: every stage, branch and fused exit with a dynamic batch axis.

``export_onnx(multi, model, directory)`` writes the files ``distill_ee.deploy.MultiExitSession`` runs (see
``distill_ee.deploy.manifest`` for the layout) with torch's ``torch.export``-based exporter; the TorchScript
exporter it replaces is deprecated upstream. Each exit's graph computes its criterion's own ``score`` (the
formula PyTorch decides with), and the manifest names the criterion's leave rule, so ONNX Runtime takes the
same exits; a criterion that cannot be exported so (``ExitCriterion.export_problem``) is refused before any
file is written. ``backbone.onnx`` is the network without exits, the baseline real early exit is compared
with.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

from ..atomic import atomic_path
from ..attachment import exporting
from ..deploy.manifest import FORMAT, VERSION, write_manifest
from ..dynamic import static_compute
from ..errors import DistillEEError
from ..extras import extra_modules, require_installed
from ..modules import eval_mode, example_input
from .criteria import ExitCriterion
from .export import prepare_export
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


def check_exportable(criteria: Sequence[ExitCriterion], names: Sequence[str]) -> None:
    """DistillEEError (one line) naming the first exit whose criterion the ONNX export cannot take, and why."""
    for name, criterion in zip(names, criteria):
        problem = criterion.export_problem()
        if problem:
            raise DistillEEError(f"exit {name!r}: the {criterion.name or type(criterion).__name__} criterion cannot "
                                 f"be exported to ONNX: it {problem}")


def export_onnx(multi: MultiExitModel, model: nn.Module, directory: Union[str, Path]) -> List[Path]:
    """Write ``multi``'s stages, branches and fused exits, the backbone and the manifest; the written paths."""
    check_exportable(multi.criteria, multi.exit_names)
    directory, stage_args, branch_args = prepare_export(multi, directory)
    plan = multi.plan
    written: List[Path] = []
    files: Dict[str, Any] = {"stages": [], "branches": []}
    with eval_mode(multi), static_compute(model), exporting(model):
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
        path = directory / "backbone.onnx"
        _export(_Backbone(model), (example_input(multi, multi.input_spec, batch=2),), path, ["input"], ["logits"])
        files["backbone"] = path.name
        written.append(path)
    manifest = {"format": FORMAT, "version": VERSION, **multi.describe(), **files, "dtype": "float32",
                "opset": OPSET}
    written.append(write_manifest(manifest, directory))  # every file's SHA-256 and graph recorded, then checked
    return written


class _CriterionScore(nn.Module):
    """A criterion's score as a module (its learned decider, if any, registered for export)."""

    def __init__(self, criterion: ExitCriterion):
        super().__init__()
        self.criterion = criterion
        decider = getattr(criterion, "decider", None)
        if isinstance(decider, nn.Module):
            self.decider = decider

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """One score per sample."""
        return self.criterion.score(logits)


class _ExitStep(nn.Module):
    """Stage ``k``, its exit's branch and its criterion's score, in one graph (one ONNX Runtime call per exit on
    the way): the stage's outputs, the logits and the score."""

    def __init__(self, stage: nn.Module, branch: nn.Module, criterion: ExitCriterion, attach: int):
        super().__init__()
        self.stage = stage
        self.branch = branch
        self.score = _CriterionScore(criterion)
        self.attach = attach

    def forward(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(stage outputs..., logits, score)."""
        outs = tuple(self.stage(*args))
        logits = self.branch(outs[self.attach])
        return (*outs, logits, self.score(logits))


def _export(module: nn.Module, args: Sequence[Any], path: Path, inputs: List[str], outputs: List[str]) -> None:
    """One module to ONNX with a dynamic batch axis on every input; progress messages and warnings silenced."""
    require_installed(extra_modules("export"), "ONNX export")
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
        with atomic_path(path) as tmp:
            program.save(str(tmp))
