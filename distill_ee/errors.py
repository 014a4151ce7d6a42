"""User-facing error types: each is one clear message that the CLI prints without a traceback."""
from __future__ import annotations

import re
from typing import Iterable, Optional

_LINE_BREAK = re.compile(r"\s*\n\s*")


class DistillEEError(Exception):
    """Base of every error caused by user input (schedule, data, checkpoint, flags)."""

    def __str__(self) -> str:
        """The message on one line, whatever it shows (the repr of a tensor or a long list spans lines)."""
        return _LINE_BREAK.sub(" ", super().__str__())


class ScheduleError(DistillEEError):
    """A schedule problem, located by file, line and YAML path, with what would be valid."""

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        line: Optional[int] = None,
        path: str = "",
        valid: Optional[Iterable[str]] = None,
        suggestions: Optional[Iterable[str]] = None,
    ):
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        self.valid = list(valid) if valid is not None else None
        self.suggestions = list(suggestions) if suggestions else []
        super().__init__(self.format())

    def format(self) -> str:
        """``file:line: path: message; did you mean X? (valid: ...)``."""
        where = self.file or "<schedule>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.path:
            text += f"{self.path}: "
        text += self.message
        if self.suggestions:
            text += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        if self.valid is not None:
            shown = self.valid if len(self.valid) <= 25 else self.valid[:25] + ["..."]
            text += f" (valid: {', '.join(str(v) for v in shown) or 'none'})"
        return text


class CheckpointError(DistillEEError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class DataError(DistillEEError):
    """A dataset directory that is missing or not in the expected layout."""


class ConfigError(DistillEEError):
    """A bad command-line value or combination of flags."""


class MissingExtraError(DistillEEError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it."""


class AttachmentError(DistillEEError):
    """An attachment that cannot be attached: the model has one of its kind already, or its attribute is taken."""


class ThinningError(DistillEEError):
    """Thinning that would remove a layer whole: every filter (or every input channel) of it is zero."""


class ThresholdError(DistillEEError, ValueError):
    """Exit thresholds that do not fit the exits: an unknown exit name, a wrong count, a value out of range."""
