"""The dataset's input shape through the model before training: data and architecture must fit each other."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from distill_ee.apputils.datasets.base import DatasetInfo
from distill_ee.errors import DataError, DistillEEError
from distill_ee.modules import eval_mode, first_line


def check_inputs(model: nn.Module, info: DatasetInfo, arch: str, device: torch.device) -> None:
    """DataError (one line) unless ``model`` maps two inputs of the dataset's shape to (2, classes) logits."""
    inputs = torch.zeros(2, *info.input_shape, device=device)
    shape = "(N, " + ", ".join(str(s) for s in info.input_shape) + ")"
    try:
        with eval_mode(model), torch.no_grad():
            out = model(inputs)
    except Exception as err:  # noqa: BLE001  (shape errors surface as RuntimeError, ValueError, TypeError ...)
        raise DataError(f"--arch {arch} cannot take the {info.name!r} images {shape}: {first_line(err)}; choose "
                        "an architecture made for this dataset") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != info.num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"--arch {arch} gives outputs of shape {got} for {info.name!r}, which has "
                        f"{info.num_classes} classes")


def trained_on(state: Mapping[str, Any]) -> Optional[Tuple[Tuple[int, ...], Optional[int]]]:
    """(input shape, class count) a checkpoint of the app says its model was trained on: the recorded ones, or
    those of the dataset it names when that dataset's images have one fixed size; None when it cannot say."""
    shape, classes = state.get("input_shape"), state.get("num_classes")
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, int) and s > 0 for s in shape):
        return tuple(shape), classes if isinstance(classes, int) and not isinstance(classes, bool) else None
    name = state.get("dataset")
    if not isinstance(name, str):
        return None
    from distill_ee.apputils.datasets.loading import dataset_info  # loading imports every dataset source

    try:
        info = dataset_info(name)
    except DistillEEError:  # an unknown name, or a dataset read from a folder: it cannot say
        return None
    return tuple(info.input_shape), info.num_classes


def check_trained_on(state: Mapping[str, Any], info: DatasetInfo, what: str) -> None:
    """DataError (one line, naming ``what`` and both shapes) when the checkpoint ``state`` was trained on images
    of another shape, or on another number of classes, than the dataset of ``info``."""
    found = trained_on(state)
    if found is None:
        return
    shape, classes = found
    if shape != tuple(info.input_shape) or (classes is not None and classes != info.num_classes):
        theirs = f"{_shape(shape)}" + (f", {classes} classes" if classes is not None else "")
        raise DataError(f"{what} was trained on {state.get('dataset')!r} images {theirs}; the data here "
                        f"({info.name!r}) are {_shape(info.input_shape)}, {info.num_classes} classes: give the "
                        f"dataset it was trained on")


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
