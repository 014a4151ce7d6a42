"""The dataset's input shape through the model before training: data and architecture must fit each other."""
from __future__ import annotations

import torch
from torch import nn

from distill_ee.apputils.datasets.base import DatasetInfo
from distill_ee.errors import DataError
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
