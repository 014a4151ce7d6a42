"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A reader never sees half a file, and a process killed mid-write leaves the previous file intact. The
temporary file is named ``.NAME.PID.XXXX.tmp``, so the temporaries of a killed writer are recognised (their
process is gone) and removed at the next write into the same folder. Finished files get the permissions the
user's umask gives any new file (not the 0600 of a temporary file). Every file the framework writes goes
through here: ``atomic_write`` (a file object), ``atomic_path`` (for writers that want a path, such as the ONNX
exporter), ``atomic_write_text``, ``atomic_write_csv`` and ``atomic_write_json``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence, Union

PathLike = Union[str, Path]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; renamed over ``path`` when the block ends,
    removed when it raises."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_csv(path: PathLike, rows: Iterable[Sequence[Any]], lineterminator: str = "\r\n") -> Path:
    """Write ``rows`` (the header first) as CSV to ``path`` atomically; the path."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=lineterminator).writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (a newline at the end) to ``path`` atomically; the path."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return Path(path)


def remove_stale_temporaries(folder: PathLike) -> int:
    """Remove the temporary files of writers that are no longer running; returns how many went."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and not _alive(int(match.group("pid"))):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def current_umask() -> int:
    """The process's umask (read without changing it where the system tells it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
