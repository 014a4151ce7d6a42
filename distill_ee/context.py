"""BuildContext: what a schedulable component may use to build itself.

The schedule builder hands one context per component instance. A component's constructor receives the fields
it names as parameters (``name``, ``model``, ``optimizer``, ``example_input``, ``num_classes``,
``input_shape``; see ``arguments.INJECTED``); a class with a ``build(ctx, **arguments)`` classmethod receives
the context itself. ``num_classes`` runs the model once on the example input, the first time it is asked.
The example input is a batch (its dtype and, for integer inputs, the range of its values are kept: see
``inputs.InputSpec``) or an InputSpec itself, from which a batch of two is made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from .arguments import ArgumentError
from .inputs import InputSpec
from .modules import eval_mode, example_input, first_line, module_names, unwrap


@dataclass
class BuildContext:
    """The model, optimizer, example input and class count a component is built for."""

    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    example_input: Union[torch.Tensor, InputSpec, None] = None
    #: the instance name of the component being built
    name: str = ""
    #: (pattern, names matched) for every name-valued argument resolved so far
    matches: List[Tuple[str, List[str]]] = field(default_factory=list)
    _num_classes: Optional[int] = field(default=None, repr=False)

    def for_instance(self, name: str) -> "BuildContext":
        """The context for the component instance ``name`` (the class count is shared, the matches are not)."""
        ctx = BuildContext(self.model, self.optimizer, self.example_input, name)
        ctx._num_classes = self._num_classes
        return ctx

    # ----------------------------------------------------------------- names (arguments.NameSource)
    def parameter_names(self) -> List[str]:
        """The model's parameter names as they are now (added modules included)."""
        return [n for n, _ in self.model.named_parameters()]

    def module_names(self) -> List[str]:
        """The model's module names (the root excluded)."""
        return module_names(self.model)

    def record_match(self, pattern: str, hits: List[str]) -> None:
        """Remember what a name or pattern of the schedule matched."""
        self.matches.append((pattern, list(hits)))

    # ----------------------------------------------------------------- derived facts
    def require_example_input(self, what: str) -> torch.Tensor:
        """The example input batch, or an ArgumentError saying ``what`` needs it."""
        if self.example_input is None:
            raise ArgumentError(f"{what} need an example input to infer shapes (pass example_input= to the "
                                "schedule loader)")
        if isinstance(self.example_input, InputSpec):
            return example_input(self.model, self.example_input, batch=2)
        return self.example_input

    @property
    def input_spec(self) -> InputSpec:
        """One sample of the example input: shape, dtype and (integer inputs) value range."""
        if isinstance(self.example_input, InputSpec):
            return self.example_input
        return InputSpec.of(self.require_example_input("this component"))

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The shape of one sample of the example input."""
        return self.input_spec.shape

    @property
    def num_classes(self) -> int:
        """The number of classes: the width of the model's (batch, classes) output on the example input."""
        if self._num_classes is None:
            x = self.require_example_input("early exits")
            try:
                with eval_mode(self.model), torch.no_grad():
                    out = self.model(x)
            except Exception as err:  # noqa: BLE001  (a model that cannot take the example input)
                raise ArgumentError(f"the model fails on the example input of shape {tuple(x.shape)}: "
                                    f"{first_line(err)}") from None
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ArgumentError("early exits need a classifier whose output is (batch, classes) logits")
            self._num_classes = int(out.shape[1])
        return self._num_classes

    def supply(self, name: str) -> Any:
        """The value of a builder-supplied constructor parameter."""
        return {"name": lambda: self.name, "model": lambda: self.model, "optimizer": lambda: self.optimizer,
                "example_input": lambda: None if self.example_input is None else self.require_example_input(""),
                "num_classes": lambda: self.num_classes,
                "input_shape": lambda: self.input_shape}[name]()

    def add_parameters(self, params: Iterable[nn.Parameter]) -> int:
        """Add the parameters the optimizer does not hold yet as one new parameter group; returns how many."""
        if self.optimizer is None:
            return 0
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in held]
        if new:
            self.optimizer.add_param_group({"params": new})
        return len(new)

    @property
    def inner_model(self) -> nn.Module:
        """The model inside a DataParallel / DDP wrapper."""
        return unwrap(self.model)

