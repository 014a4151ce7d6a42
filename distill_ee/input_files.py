"""Files a user names, read one way: regular files only, bounded in size, text decoded with located errors.

Every file a user hands the framework (a schedule, a cascade or tier file, an activation statistics file, a
quantization config, an export's manifest) is read here. A FIFO, a device (``/dev/zero``), a socket or a
directory is refused with one line before anything is opened (a FIFO would block the reader forever, a
device would never end); a file larger than its kind may be is refused before it is read whole; a symbolic
link is followed to what it points to, which must be a regular file too. Standard input is read only where a
caller allows it, named by ``-``, and bounded the same way. Nothing here imports torch.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Optional

from .errors import ConfigError

#: the usual bound of a text file a user writes (a schedule, a cascade or tier file)
TEXT_LIMIT = 1 << 20
#: statistics files and manifests list every layer of a network: more room
DATA_LIMIT = 16 << 20
#: the name standard input goes by in messages and in the schedule a run records
STDIN = "<stdin>"


class InputFileError(ConfigError):
    """A file a user named that cannot be read as one: ``reason`` says why, ``path`` which file."""

    def __init__(self, path: str, reason: str, line: Optional[int] = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def _kind_of(mode: int) -> str:
    """What a file that is not a regular one is, in a few words."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO or pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def input_label(path: str, stdin: bool = False) -> str:
    """How messages name the input ``path``: ``<stdin>`` for ``-`` where standard input is allowed."""
    return STDIN if stdin and path == "-" else str(path)


def read_input(path: str, what: str, limit: int = TEXT_LIMIT, *, stdin: bool = False) -> bytes:
    """The bytes of the ``what`` file at ``path`` (``-``: standard input, where ``stdin`` allows it)."""
    if path == "-" and stdin:
        return _bounded(sys.stdin.buffer, STDIN, what, limit)
    hint = "; give `-` to read it from standard input" if stdin else ""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise InputFileError(path, f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise InputFileError(path, f"is not a regular file ({_kind_of(mode)}): a {what} is read from a file{hint}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise InputFileError(path, f"cannot be read ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # replaced between the check and the open
            raise InputFileError(path, f"is not a regular file: a {what} is read from a file{hint}")
        return _bounded(fh, path, what, limit)


def _bounded(fh: object, path: str, what: str, limit: int) -> bytes:
    try:
        data = fh.read(limit + 1)  # type: ignore[attr-defined]
    except OSError as err:
        raise InputFileError(path, f"cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise InputFileError(path, f"is larger than {_size(limit)}: too large for a {what}")
    return data


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def decode_text(data: bytes, path: str, what: str) -> str:
    """``data`` as UTF-8 text (a BOM dropped); an undecodable byte is an error located by its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputFileError(path, f"not UTF-8 text: byte 0x{data[err.start]:02x} cannot be decoded (save the "
                                   f"{what} as UTF-8)", line=line) from None


def read_text_input(path: str, what: str, limit: int = TEXT_LIMIT, *, stdin: bool = False) -> str:
    """The text of the ``what`` file at ``path``, read and decoded as ``read_input`` and ``decode_text`` do."""
    return decode_text(read_input(path, what, limit, stdin=stdin), input_label(path, stdin), what)
