"""Distiller's ``--thinnify`` and ``--export-onnx``: act on the loaded model, write one file, and exit.

* ``thinnify``: Distiller's ``contract_model``: zero filters, then ignored channels, physically removed
  (``distill_ee.thinning``), the thinning recorded as the checkpoint's structure steps so that
  ``--resume-from`` rebuilds the smaller model.
* ``export_classifier_onnx``: Distiller's ``export_img_classifier_to_onnx(add_softmax=True)``: the model with a
  softmax on its output (``input`` -> ``output``, probabilities), one ONNX file with a dynamic batch axis,
  written by the same torch.export-based exporter as ``--ee-export onnx``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from ..attachment import exporting
from ..dynamic import static_compute
from ..early_exit.onnx_export import _export as export_module
from ..modules import eval_mode, unwrap
from ..thinning import remove_channels, remove_filters


def parameter_count(model: nn.Module) -> int:
    """The number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def thinnify(model: nn.Module, masks: Optional[Mapping[str, Any]] = None) -> Tuple[int, int]:
    """Remove every zero filter, then every channel no layer reads (Distiller's order); (parameters before,
    after)."""
    before = parameter_count(model)
    remove_filters(unwrap(model), masks)
    remove_channels(unwrap(model), masks)
    return before, parameter_count(model)


def thinned_name(checkpoint: str) -> str:
    """Distiller's name of the thinned checkpoint: ``NAME_thinned_checkpoint.pth.tar`` for ``NAME.pth.tar``."""
    name = Path(checkpoint).name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}_thinned_checkpoint.pth.tar"


class _WithSoftmax(nn.Module):
    """The model's final output turned into class probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the final classifier's logits."""
        return torch.softmax(self.model(x), dim=1)


def export_classifier_onnx(model: nn.Module, input_shape: Tuple[int, ...], path: Path) -> Path:
    """Write ``model`` with a softmax output to the ONNX file ``path`` (every block runs, exits are not taken);
    DistillEEError (one line) when the exporter fails."""
    model = unwrap(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, *input_shape, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model), static_compute(model), exporting(model):
        export_module(_WithSoftmax(model), (example,), path, ["input"], ["output"])
    return path
