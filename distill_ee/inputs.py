"""InputSpec: one sample of a model's input (shape, dtype, value range), from which every dummy input is made.

A float input (the default, and what a plain shape means) follows the model's own floating dtype and is drawn
from a normal distribution. An integer input (token ids, class indices) keeps its dtype and is drawn uniformly
from the half-open range ``[low, high)`` (``torch.randint``'s convention): taken from the user's example tensor
as ``[min, max + 1)`` of the values seen, or given explicitly. A structure step records the dtype and range next
to the shape (``input_dtype``, ``input_range``) only for an integer input, so a step without them is a float one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import DistillEEError

#: the integer dtypes an input may have, by the names a user writes (``torch.<name>`` without ``torch.``)
INTEGER_DTYPES: Dict[str, torch.dtype] = {"int64": torch.int64, "long": torch.int64, "int32": torch.int32,
                                          "int": torch.int32, "int16": torch.int16, "int8": torch.int8,
                                          "uint8": torch.uint8}
#: the names that mean a float input (which follows the model's floating dtype)
FLOAT_NAMES = ("float", "float32", "float64", "double", "float16", "half", "bfloat16")


class InputSpecError(DistillEEError, ValueError):
    """An input dtype or value range that cannot describe a model input."""


@dataclass(frozen=True)
class InputSpec:
    """One sample's shape, its integer dtype (None: float, the model's own) and value range ``[low, high)``."""

    shape: Tuple[int, ...]
    dtype: Optional[str] = None
    low: Optional[int] = None
    high: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", None if self.dtype is None else dtype_name(self.dtype))
        if self.dtype is None:
            if self.low is not None or self.high is not None:
                raise InputSpecError("a value range is for integer inputs only (give an integer dtype)")
            return
        if self.low is None or self.high is None or not int(self.low) < int(self.high):
            raise InputSpecError(f"an {self.dtype} input needs a value range low,high with low < high "
                                 f"(high excluded), got {self.low},{self.high}")

    @property
    def is_float(self) -> bool:
        """Whether the input is floating point (it then follows the model's dtype)."""
        return self.dtype is None

    @classmethod
    def of(cls, x: torch.Tensor, value_range: Optional[Sequence[int]] = None) -> "InputSpec":
        """The spec of one sample of the batch ``x``; an integer batch's range is ``value_range`` or the values
        seen, ``[min, max + 1)``."""
        shape = tuple(int(s) for s in x.shape[1:])
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            return cls(shape)
        name = next(n for n, d in INTEGER_DTYPES.items() if d == x.dtype)
        if value_range is None:
            value_range = (int(x.min()), int(x.max()) + 1) if x.numel() else (0, 1)
        return cls(shape, name, int(value_range[0]), int(value_range[1]))

    def make(self, batch: int, *, float_dtype: torch.dtype = torch.float32,
             device: Union[str, torch.device] = "cpu", seed: int = 0) -> torch.Tensor:
        """A fixed pseudo-random batch (a private generator: the global RNG is untouched)."""
        gen = torch.Generator().manual_seed(seed)
        size = (batch, *self.shape)
        if self.is_float:
            x = torch.randn(size, generator=gen, dtype=float_dtype)
        else:
            x = torch.randint(int(self.low), int(self.high), size, generator=gen, dtype=INTEGER_DTYPES[self.dtype])
        return x.to(device)

    def record(self) -> Dict[str, Any]:
        """The step fields that describe this input: ``input_shape``, and for an integer input its dtype and
        range."""
        out: Dict[str, Any] = {"input_shape": list(self.shape)}
        if not self.is_float:
            out.update(input_dtype=self.dtype, input_range=[int(self.low), int(self.high)])
        return out

    def describe(self) -> str:
        """``(N, C, H, W)``, with an integer input's dtype and range."""
        text = "(N, " + ", ".join(str(s) for s in self.shape) + ")"
        return text if self.is_float else f"{text} {self.dtype} in [{self.low}, {self.high})"


#: what every function making a dummy input accepts: a spec, or a plain shape (a float input)
InputLike = Union[InputSpec, Sequence[int]]


def input_spec(value: InputLike) -> InputSpec:
    """``value`` as an InputSpec (a plain shape is a float input)."""
    return value if isinstance(value, InputSpec) else InputSpec(tuple(int(s) for s in value))


def spec_from_record(record: Mapping[str, Any]) -> InputSpec:
    """The input a step or manifest records (``input_shape``, and ``input_dtype`` / ``input_range`` when not
    float: an old record without them is a float input)."""
    dtype, value_range = record.get("input_dtype"), record.get("input_range")
    if dtype is None:
        return InputSpec(tuple(int(s) for s in record["input_shape"]))
    if not isinstance(value_range, (list, tuple)) or len(value_range) != 2:
        raise InputSpecError(f"an {dtype} input records its range as [low, high], got {value_range!r}")
    return InputSpec(tuple(int(s) for s in record["input_shape"]), str(dtype), int(value_range[0]),
                     int(value_range[1]))


def dtype_name(name: Any) -> Optional[str]:
    """The canonical name of an input dtype (None for a float one); InputSpecError for an unknown name."""
    text = str(name).removeprefix("torch.")
    if text in FLOAT_NAMES:
        return None
    if text not in INTEGER_DTYPES:
        raise InputSpecError(f"unknown input dtype {name!r} (valid: {', '.join((*FLOAT_NAMES[:1], *INTEGER_DTYPES))})")
    return str(INTEGER_DTYPES[text]).removeprefix("torch.")
