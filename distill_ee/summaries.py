"""Model summaries in Distiller's style: weight sparsity, compute (MACs) and module tables.

Compute follows Distiller's convention: only convolutions and fully-connected layers are counted
(batch norm, pooling, activations and element-wise ops are treated as free), biases are ignored,
and MACs are per sample. A layer's *effective* MACs are its dense MACs scaled by the density of
its weight, zeros either physically present or set by a pruning mask, as Distiller's compute table
does for fine-grained sparsity. Only modules called as modules are seen: functional ops (for
example the attention products inside ``nn.MultiheadAttention``) are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from tabulate import tabulate
from torch import nn

from distill_ee.pruning.masks import ParameterMasker

Masks = Optional[Mapping[str, ParameterMasker]]

SPARSITY_COLUMNS = [
    "Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Cols (%)", "Rows (%)", "Ch (%)",
    "2D (%)", "3D (%)", "Fine (%)", "Std", "Mean", "Abs-Mean",
]


@dataclass
class LayerCompute:
    """Compute of one convolution or linear layer for one sample."""

    name: str
    type: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    params: int
    nnz: int
    dense_macs: int
    effective_macs: int

    def as_row(self) -> Dict[str, object]:
        """The table row of this layer."""
        return {
            "Name": self.name,
            "Type": self.type,
            "IFM": _shape_str(self.input_shape),
            "OFM": _shape_str(self.output_shape),
            "Weights": _shape_str(self.weight_shape),
            "Params": self.params,
            "NNZ": self.nnz,
            "MACs (dense)": self.dense_macs,
            "MACs (effective)": self.effective_macs,
        }


# ---------------------------------------------------------------- parameters and masks


def masked_parameters(model: nn.Module, masks: Masks = None) -> Dict[str, torch.Tensor]:
    """Every named parameter of ``model`` (detached), multiplied by its mask when one is set."""
    out = {}
    for name, param in model.named_parameters():
        value = param.detach()
        masker = masks.get(name) if masks else None
        if masker is not None and masker.mask is not None:
            value = value * masker.mask.to(value.device, value.dtype)
        out[name] = value
    return out


def params_nnz(model: nn.Module, masks: Masks = None) -> Tuple[int, int]:
    """(number of parameters, number of nonzero parameters), masks applied."""
    params = masked_parameters(model, masks).values()
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


# ---------------------------------------------------------------- sparsity


def _zero_fraction(norms: torch.Tensor) -> float:
    """Fraction of structures whose L1 norm is zero."""
    return 0.0 if norms.numel() == 0 else 1.0 - int(torch.count_nonzero(norms)) / norms.numel()


def sparsity_cols(weight: torch.Tensor) -> float:
    """Zero columns of the transposed GEMM matrix, i.e. all-zero output rows of a 2D weight (0..1)."""
    return _zero_fraction(weight.abs().sum(dim=1)) if weight.dim() == 2 else 0.0


def sparsity_rows(weight: torch.Tensor) -> float:
    """Zero rows of the transposed GEMM matrix, i.e. all-zero input columns of a 2D weight (0..1)."""
    return _zero_fraction(weight.abs().sum(dim=0)) if weight.dim() == 2 else 0.0


def sparsity_ch(weight: torch.Tensor) -> float:
    """All-zero input channels of a convolution weight (0..1)."""
    if weight.dim() < 3:
        return 0.0
    return _zero_fraction(weight.abs().transpose(0, 1).reshape(weight.size(1), -1).sum(dim=1))


def sparsity_2d(weight: torch.Tensor) -> float:
    """All-zero kernels of a convolution weight, or all-zero rows of a 2D weight (0..1)."""
    if weight.dim() == 2:
        return sparsity_cols(weight)
    if weight.dim() < 2:
        return 0.0
    return _zero_fraction(weight.abs().reshape(weight.size(0) * weight.size(1), -1).sum(dim=1))


def sparsity_3d(weight: torch.Tensor) -> float:
    """All-zero filters (output channels) of a convolution weight (0..1)."""
    if weight.dim() < 3:
        return 0.0
    return _zero_fraction(weight.abs().reshape(weight.size(0), -1).sum(dim=1))


def _sparsity_row(name: str, w: torch.Tensor) -> Dict[str, object]:
    nnz = int(torch.count_nonzero(w))
    wf = w.float()
    return {
        "Name": name,
        "Shape": _shape_str(tuple(w.shape)),
        "NNZ (dense)": w.numel(),
        "NNZ (sparse)": nnz,
        "Cols (%)": 100.0 * sparsity_cols(w),
        "Rows (%)": 100.0 * sparsity_rows(w),
        "Ch (%)": 100.0 * sparsity_ch(w),
        "2D (%)": 100.0 * sparsity_2d(w),
        "3D (%)": 100.0 * sparsity_3d(w),
        "Fine (%)": 100.0 * (1.0 - nnz / w.numel()),
        "Std": float(wf.std()) if w.numel() > 1 else 0.0,
        "Mean": float(wf.mean()),
        "Abs-Mean": float(wf.abs().mean()),
    }


def sparsity_summary(model: nn.Module, masks: Masks = None) -> List[Dict[str, object]]:
    """Distiller's weights sparsity summary: a row per weight with more than one dimension, then a Total row."""
    rows = [
        _sparsity_row(name, w)
        for name, w in masked_parameters(model, masks).items()
        if w.dim() > 1 and "weight" in name.rsplit(".", 1)[-1]
    ]
    dense = sum(int(r["NNZ (dense)"]) for r in rows)
    sparse = sum(int(r["NNZ (sparse)"]) for r in rows)
    total = {c: 0 for c in SPARSITY_COLUMNS}
    total.update({
        "Name": "Total sparsity:",
        "Shape": "-",
        "NNZ (dense)": dense,
        "NNZ (sparse)": sparse,
        "Fine (%)": 0.0 if dense == 0 else 100.0 * (1.0 - sparse / dense),
    })
    return rows + [total]


def sparsity_table(model: nn.Module, masks: Masks = None) -> Tuple[List[Dict[str, object]], str]:
    """The sparsity rows (last one is the Total, whose 'Fine (%)' is the total sparsity) and their table."""
    rows = sparsity_summary(model, masks)
    return rows, tabulate(rows, headers="keys", tablefmt="psql", floatfmt=".5f")


def total_sparsity(model: nn.Module, masks: Masks = None) -> float:
    """Percentage (0-100) of zeros among the weights that the sparsity table lists."""
    return float(sparsity_summary(model, masks)[-1]["Fine (%)"])


# ---------------------------------------------------------------- compute


def _batch_size(module: nn.Module, x: torch.Tensor) -> int:
    """Samples in ``x`` as seen by ``module``: 1 for unbatched convolution or vector inputs."""
    if isinstance(module, nn.modules.conv._ConvNd):
        spatial = len(module.kernel_size)
        return x.shape[0] if x.dim() == spatial + 2 else 1
    return x.shape[0] if x.dim() > 1 else 1


def dense_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv or linear layer, per sample, bias ignored."""
    batch = max(_batch_size(module, x), 1)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        per_input = module.out_channels // module.groups * _prod(module.kernel_size)
        return x.numel() * per_input // batch
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * _prod(module.kernel_size)
        return y.numel() * per_output // batch
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features // batch
    return 0


def _layer_compute(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> LayerCompute:
    """The compute record of one call of ``module`` whose (masked) weight is ``w``."""
    macs = dense_macs(module, x, y)
    nnz = int(torch.count_nonzero(w))
    return LayerCompute(
        name=name,
        type=type(module).__name__,
        input_shape=tuple(x.shape),
        output_shape=tuple(y.shape),
        weight_shape=tuple(w.shape),
        params=sum(p.numel() for p in module.parameters(recurse=False)),
        nnz=nnz,
        dense_macs=macs,
        effective_macs=round(macs * nnz / w.numel()) if w.numel() else 0,
    )


def _is_counted(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )


def module_macs(model: nn.Module, example_input: torch.Tensor, masks: Masks = None) -> List[LayerCompute]:
    """Per-sample dense and effective MACs of each conv/linear layer that runs on ``example_input``.

    One forward pass in eval mode without gradients (no batch-norm statistics change); the model's mode is
    restored. Layers not called in forward get no row; a layer called several times gets one row, MACs summed.
    """
    names = {m: n for n, m in model.named_modules()}
    weights = masked_parameters(model, masks)
    seen: Dict[str, LayerCompute] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        w = weights.get(_join(name, "weight"), module.weight.detach())
        layer = _layer_compute(name, module, inputs[0], output, w)
        if name in seen:
            seen[name].dense_macs += layer.dense_macs
            seen[name].effective_macs += layer.effective_macs
        else:
            seen[name] = layer

    handles = [m.register_forward_hook(hook) for m in names if _is_counted(m)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return list(seen.values())


def total_macs(model: nn.Module, example_input: torch.Tensor, masks: Masks = None) -> Tuple[int, int]:
    """(dense, effective) MACs per sample of one forward pass on ``example_input``."""
    layers = module_macs(model, example_input, masks)
    return sum(l.dense_macs for l in layers), sum(l.effective_macs for l in layers)


def compute_table(
    model: nn.Module, example_input: torch.Tensor, masks: Masks = None
) -> Tuple[List[LayerCompute], str]:
    """The per-layer compute and its table, ending with a Total row of dense and effective MACs."""
    layers = module_macs(model, example_input, masks)
    rows = [l.as_row() for l in layers]
    rows.append({
        "Name": "Total",
        "Type": "",
        "IFM": "",
        "OFM": "",
        "Weights": "",
        "Params": sum(l.params for l in layers),
        "NNZ": sum(l.nnz for l in layers),
        "MACs (dense)": sum(l.dense_macs for l in layers),
        "MACs (effective)": sum(l.effective_macs for l in layers),
    })
    return layers, tabulate(rows, headers="keys", tablefmt="psql", intfmt=",")


# ---------------------------------------------------------------- model


def model_table(model: nn.Module) -> str:
    """A table of every module: qualified name, type, and the parameters it owns directly; then a total."""
    rows = [
        {
            "Name": name or "(root)",
            "Type": type(module).__name__,
            "Params": sum(p.numel() for p in module.parameters(recurse=False)),
        }
        for name, module in model.named_modules()
    ]
    rows.append({"Name": "Total", "Type": "", "Params": params_nnz(model)[0]})
    return tabulate(rows, headers="keys", tablefmt="psql", intfmt=",")


# ---------------------------------------------------------------- helpers


def _shape_str(shape: Tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _prod(values: Tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
