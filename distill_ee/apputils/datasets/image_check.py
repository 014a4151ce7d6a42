"""Image files checked before training: found without following symlink loops, each readable by PIL, complete
and not a decompression bomb.

Two checks: ``header`` (the default) opens each file with PIL and reads its header and size, verifies a PNG's
chunk checksums and follows a JPEG's segments to its end-of-image marker; ``decode`` also decodes every pixel,
as training does.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Sequence, Set, Tuple, Union

from PIL import Image, UnidentifiedImageError

from distill_ee.modules import first_line

#: the checks a file can get, cheapest first
CHECKS = ("header", "decode")
#: PIL's own default ``Image.MAX_IMAGE_PIXELS``: an image with more pixels is refused as a decompression bomb
DEFAULT_MAX_PIXELS = 89_478_485

# The next JPEG marker: an 0xFF not followed by 0x00 (a stuffed byte in entropy-coded data), 0xD0-0xD7 (a
# restart marker) or 0xFF (a fill byte); entropy-coded data holds no other 0xFF.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_START_OF_SCAN, _END_OF_IMAGE = 0xDA, 0xD9
_END_MARKER = b"\xff\xd9"
_STANDALONE = 0x01  # TEM, a marker without a length
#: how far from its end a JPEG's end-of-image marker is looked for before its scans are followed
_TAIL = 4096
_Buffer = Union[bytes, mmap.mmap]


@dataclass(frozen=True)
class BadFile:
    """A file or folder left out of a dataset, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ImageTree:
    """The image files found under a folder, and the folders that were not walked (symlink loops, unreadable)."""

    files: List[str] = field(default_factory=list)
    bad_folders: List[BadFile] = field(default_factory=list)


def find_images(top: str, extensions: Tuple[str, ...]) -> ImageTree:
    """Files under ``top`` whose names end with ``extensions`` (any case), in torchvision's ImageFolder order.

    Directory symlinks are followed, except one that leads back to a folder it lies in: that is a bad folder.
    """
    tree = ImageTree()
    found: List[Tuple[str, List[str]]] = []
    _walk(top, _ancestors(top), tuple(e.lower() for e in extensions), found, tree.bad_folders)
    for root, names in sorted(found):
        tree.files.extend(os.path.join(root, name) for name in sorted(names))
    return tree


def _ancestors(top: str) -> Set[Tuple[int, int]]:
    """The (device, inode) of ``top`` and of every folder above it, along its own path and its resolved one."""
    keys = set()
    for path in (os.path.abspath(top), os.path.realpath(top)):
        while True:
            keys.add(_key(path))
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return keys


def _key(path: str) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _walk(folder: str, chain: Set[Tuple[int, int]], extensions: Tuple[str, ...],
          found: List[Tuple[str, List[str]]], bad: List[BadFile]) -> None:
    """Collect ``folder``'s image file names and walk its sub-folders; ``chain`` holds the folders above."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        bad.append(BadFile(folder, f"cannot list the folder ({exc.strerror or first_line(exc)})"))
        return
    names = []
    for entry in entries:
        if _is_dir(entry):
            key = _key(entry.path)
            if key in chain:
                bad.append(BadFile(entry.path, f"symlink loop: leads back to {os.path.realpath(entry.path)}, "
                                               "a folder it lies in"))
            else:
                _walk(entry.path, chain | {key}, extensions, found, bad)
        elif entry.name.lower().endswith(extensions):
            names.append(entry.name)
    found.append((folder, names))


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder or a link to one (as os.walk decides: a link that cannot be resolved is a file)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def check_images(paths: Sequence[str], check: str = "header",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[List[str], List[BadFile]]:
    """The ``paths`` that pass ``check`` and those that do not, with the reason, each in the given order."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    good, bad = [], []
    for path in paths:
        reason = image_problem(path, check, max_pixels)
        if reason is None:
            good.append(path)
        else:
            bad.append(BadFile(path, reason))
    return good, bad


def image_problem(path: str, check: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Why training could not use the image file ``path`` (one line), or None when it passes ``check``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return "broken symlink" if os.path.islink(path) else f"cannot read it ({exc.strerror or first_line(exc)})"
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        return "not a regular file"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as f:
            return _file_problem(f, check, max_pixels)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or first_line(exc)})"


def _file_problem(f: BinaryIO, check: str, max_pixels: int) -> Optional[str]:
    problem, image_format = _header_problem(f, max_pixels)
    if problem is None and image_format == "JPEG" and not _jpeg_complete(f):
        problem = "truncated: the JPEG ends before its end-of-image marker"
    if problem is None and check == "decode":
        f.seek(0)
        problem = _decode_problem(f)
    return problem


def _header_problem(f: BinaryIO, max_pixels: int) -> Tuple[Optional[str], Optional[str]]:
    """What is wrong with the format, size or checksums of the image in ``f`` (or None), and its format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a bomb is reported, not warned about
            image = Image.open(f)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                return (f"decompression bomb: {width}x{height} = {width * height:,} pixels, above the limit of "
                        f"{max_pixels:,}"), image.format
            image.verify()
            return None, image.format
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return f"decompression bomb: more than {limit:,} pixels (PIL refuses to open it)", None
    except UnidentifiedImageError:
        return "not an image (PIL recognises no image format in it)", None
    except Exception as exc:  # noqa: BLE001  (a damaged file raises SyntaxError, ValueError, struct.error ...)
        return f"damaged: {first_line(exc)}", None


def _decode_problem(f: BinaryIO) -> Optional[str]:
    """Why the image in ``f`` cannot be decoded to RGB (as torchvision's loader does it), or None."""
    try:
        with Image.open(f) as image:
            image.convert("RGB")
        return None
    except Exception as exc:  # noqa: BLE001  (decoders raise OSError, SyntaxError, ValueError ...)
        return f"cannot be decoded: {first_line(exc)}"


def _jpeg_complete(f: BinaryIO) -> bool:
    """Whether the JPEG in ``f`` reaches its end-of-image marker (bytes after it are allowed, as PIL allows).

    A JPEG without it fails to decode. The header's segments are skipped by their lengths (a thumbnail inside one
    has an end marker of its own); then the end marker is looked for in the file's last bytes, and only when it
    is not there (data after it, or a truncated file) are the scans followed to the end.
    """
    with _mapped(f) as data:
        markers = _markers(data)
        for code, pos in markers:
            if code == _END_OF_IMAGE:
                return True
            if code == _START_OF_SCAN:
                break
        else:
            return False
        if data.find(_END_MARKER, max(pos, len(data) - _TAIL)) >= 0:
            return True
        return any(code == _END_OF_IMAGE for code, _ in markers)


def _markers(data: _Buffer) -> Iterator[Tuple[int, int]]:
    """Each marker of a JPEG after its start-of-image marker: its code and where its segment ends."""
    pos, size = 2, len(data)
    while True:
        found = _NEXT_MARKER.search(data, pos)
        if found is None:
            return
        code, pos = data[found.start() + 1], found.start() + 2
        if code not in (_END_OF_IMAGE, _STANDALONE):
            if pos + 2 > size:
                return
            pos += int.from_bytes(data[pos:pos + 2], "big")
        yield code, pos


@contextlib.contextmanager
def _mapped(f: BinaryIO) -> Iterator[_Buffer]:
    """The bytes of ``f`` mapped into memory, so that only the pages looked at are read (read whole on a file
    system without memory maps)."""
    try:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        f.seek(0)
        yield f.read()
        return
    with data:
        yield data
