"""What every holder of a multi-exit model's per-exit settings shares: the exits, the multi-exit model cut from
a model, an export's manifest.

``ExitOutputs`` gives the names of the outputs (the exits', then the final classifier's) from ``exit_names``
and ``final_name``; ``resolve_thresholds`` reads thresholds as callers give them: a list in exit order (a
trailing ``None`` for the final classifier tolerated) or a mapping exit name -> threshold (the exits it leaves
out keep theirs); ``None`` means the exit is never taken. Nothing here imports torch.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

from .errors import ThresholdError

ThresholdArg = Union[Sequence[Optional[float]], Mapping[str, Optional[float]]]


class ExitOutputs:
    """Mixin: ``num_exits`` and ``output_names`` of a holder with ``exit_names`` and ``final_name``."""

    exit_names: List[str]
    final_name: str

    @property
    def num_exits(self) -> int:
        """Number of early exits (the final classifier not counted)."""
        return len(self.exit_names)

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's name (the order of every per-output list)."""
        return [*self.exit_names, self.final_name]


def resolve_thresholds(names: Sequence[str], current: Sequence[Optional[float]],
                       given: ThresholdArg) -> List[Optional[float]]:
    """One threshold per exit of ``names`` from ``given`` (``current`` for those a mapping leaves out)."""
    if isinstance(given, Mapping):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise ThresholdError(f"no exit named {unknown[0]!r} (exits: {', '.join(names)})")
        return [given.get(n, t) for n, t in zip(names, current)]
    new = list(given)
    if len(new) == len(names) + 1 and new[-1] is None:
        new = new[:-1]
    if len(new) != len(names):
        raise ThresholdError(f"need {len(names)} thresholds (one per exit), got {len(new)}")
    return new
