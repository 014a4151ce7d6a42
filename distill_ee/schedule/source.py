"""Safe YAML reading that remembers where every key and item came from (file and line)."""
from __future__ import annotations

import logging
import re
from typing import Any, List, Optional, Sequence, Set, Tuple, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..arguments import ArgumentError, check_value
from ..errors import ScheduleError
from ..input_files import TEXT_LIMIT, InputFileError, decode_text, input_label, read_input
from ..registry import suggest

PathKey = Union[str, int]
YamlPath = Tuple[PathKey, ...]

_STR_TAG = "tag:yaml.org,2002:str"
#: a number with an exponent and no sign or dot rules (``1e-3``, ``2E5``): a float in YAML 1.2, plain text in 1.1
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")
_PLAIN_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
}


class LocatedDict(dict):
    """A dict from YAML that knows its own line and the line of each key."""

    line: Optional[int] = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_lines: dict = {}


class LocatedList(list):
    """A list from YAML that knows its own line and the line of each item."""

    line: Optional[int] = None

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.item_lines: list = []


def format_path(path: Sequence[PathKey]) -> str:
    """Render ``('policies', 3, 'pruner')`` as ``policies[3].pruner``."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif "." in str(key) or " " in str(key):
            out += f"[{str(key)!r}]"
        else:
            out += ("." if out else "") + str(key)
    return out


class ScheduleSource:
    """The parsed schedule plus its file name, for locating errors."""

    def __init__(self, data: LocatedDict, file: Optional[str], text: str = ""):
        self.data = data
        self.file = file
        #: the schedule's text as read
        self.text = text
        #: located warnings about the text (a duplicate key repeating its value)
        self.warnings: List[str] = []

    def line_of(self, path: Sequence[PathKey]) -> Optional[int]:
        """The line of the deepest node of ``path`` that exists."""
        node: Any = self.data
        line = getattr(node, "line", None)
        for key in path:
            if isinstance(node, LocatedDict) and key in node:
                line = node.key_lines.get(key, line)
                node = node[key]
            elif isinstance(node, LocatedList) and isinstance(key, int) and 0 <= key < len(node):
                line = node.item_lines[key]
                node = node[key]
            else:
                break
        return line

    def error(self, path: Sequence[PathKey], message: str, **kwargs: Any) -> ScheduleError:
        """A ScheduleError located at ``path``."""
        return ScheduleError(message, file=self.file, line=self.line_of(path), path=format_path(path), **kwargs)

    def expect_keys(self, path: Sequence[PathKey], value: Any, valid: Sequence[str], what: str) -> None:
        """A located error unless ``value`` (at ``path``) is a mapping whose keys are among ``valid``; ``what``
        says what a valid value looks like."""
        if not isinstance(value, dict):
            raise self.error(path, what)
        for key in value:
            if key not in valid:
                raise self.error([*path, key], f"unknown key {key!r}", valid=list(valid),
                                 suggestions=suggest(str(key), valid))


#: deepest nesting of mappings and lists a schedule may have
MAX_DEPTH = 64
#: most values a schedule may expand to (YAML aliases repeated inside each other multiply them)
MAX_VALUES = 100_000

log = logging.getLogger("distill_ee")


def decode_schedule(data: bytes, file: Optional[str] = None, what: str = "schedule") -> str:
    """Schedule bytes as text (UTF-8, an optional BOM dropped); a located ScheduleError when it is not UTF-8."""
    try:
        return decode_text(data, file or "<schedule>", what)
    except InputFileError as err:
        raise ScheduleError(err.reason, file=file, line=err.line) from None


def read_yaml_text(path: str, what: str, limit: int = TEXT_LIMIT, *, stdin: bool = False) -> str:
    """The text of the YAML file a user named (``distill_ee.input_files``: regular files only, bounded,
    UTF-8); every problem a ScheduleError located in the file."""
    label = input_label(path, stdin)
    try:
        data = read_input(path, what, limit, stdin=stdin)
    except InputFileError as err:
        raise ScheduleError(err.reason, file=label) from None
    return decode_schedule(data, label, what)


def read_yaml_file(path: str, what: str, limit: int = TEXT_LIMIT, shape: Optional[str] = None) -> ScheduleSource:
    """The YAML file a user named, read (``read_yaml_text``) and parsed by the hardened loader; ``shape`` is
    what the message says when the top level is not a mapping."""
    return parse_yaml(read_yaml_text(path, what, limit), str(path), what, shape)


def load_as(source: ScheduleSource, schema: Any, path: Sequence[PathKey] = ()) -> Any:
    """The value at ``path`` of ``source`` checked by the annotation ``schema`` (a dataclass: its fields'
    annotations, as schedule components are checked); errors located in the file."""
    value = source.data
    for key in path:
        value = value[key]
    try:
        return check_value(schema, value)
    except ArgumentError as err:
        raise source.error([*path, *err.path], err.message, valid=err.valid, suggestions=err.suggestions) from None


def parse_yaml(text: str, file: Optional[str] = None, what: str = "schedule",
               shape: Optional[str] = None) -> ScheduleSource:
    """Parse YAML text (a schedule, or another ``what`` file a user wrote) with PyYAML's safe loader; object
    tags, recursive or exploding aliases, deep nesting and unreadable values are located ScheduleErrors; a
    duplicate key is one too unless its value repeats; the top level is a mapping."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, file, what) from None
    try:
        _check_depth(text, file, what)
        root = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, file, what) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ScheduleError(f"not valid YAML: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    if root is None:
        raise ScheduleError(f"the {what} is empty", file=file, line=1)
    converter = _Converter(loader, file, what)
    data = converter.convert(root, ())
    if not isinstance(data, LocatedDict):
        raise ScheduleError(shape or f"the {what} must be a mapping" + (" of sections (version, pruners, policies "
                                                                        "...)" if what == "schedule" else ""),
                            file=file, line=1)
    source = ScheduleSource(data, file, text)
    source.warnings = converter.warnings
    for warning in converter.warnings:
        log.warning("%s", warning)
    return source


def _reader_error(exc: "yaml.reader.ReaderError", text: str, file: Optional[str], what: str) -> ScheduleError:
    line = text[:exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
    char = chr(exc.character) if isinstance(exc.character, int) else exc.character
    return ScheduleError(f"not valid YAML: character {char!r} is not allowed (control characters other "
                         f"than tab and newline cannot appear in a {what})", file=file, line=line)


def _check_depth(text: str, file: Optional[str], what: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before composing (the composer recurses once per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ScheduleError(f"nested more than {MAX_DEPTH} levels deep; a {what} is a few levels of "
                                    "mappings and lists", file=file, line=event.start_mark.line + 1)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _Converter:
    """Turns composed YAML nodes into Located containers, checking tags, aliases and duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, file: Optional[str], what: str = "schedule"):
        self.loader = loader
        self.file = file
        self.what = what
        self.values = 0
        self.active: Set[int] = set()
        self.warnings: List[str] = []

    def _fail(self, node: Node, path: YamlPath, message: str) -> ScheduleError:
        return ScheduleError(message, file=self.file, line=node.start_mark.line + 1, path=format_path(path))

    def convert(self, node: Node, path: YamlPath) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self._fail(node, path, f"the {self.what} expands to more than {MAX_VALUES:,} values (YAML aliases "
                                         "repeated inside each other?)")
        if node.tag not in _PLAIN_TAGS:
            raise self._fail(node, path, f"YAML tag {node.tag!r} is not allowed: a {self.what} holds plain data only "
                                         "(tags that construct Python objects are refused)")
        if id(node) in self.active:
            raise self._fail(node, path, "a YAML alias refers to a node that contains it (a recursive anchor)")
        if not isinstance(node, (MappingNode, SequenceNode)):
            return self._scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            out = LocatedList()
            out.line = node.start_mark.line + 1
            for i, item in enumerate(node.value):
                out.append(self.convert(item, path + (i,)))
                out.item_lines.append(item.start_mark.line + 1)
            return out
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: Node, path: YamlPath) -> Any:
        if node.tag == _STR_TAG and node.style is None and _EXPONENT_FLOAT.fullmatch(node.value):
            return float(node.value)  # YAML 1.2's 1e-3, which PyYAML's YAML 1.1 rules leave a string
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001  (ValueError, KeyError, OverflowError ... from the constructors)
            kind = str(node.tag).rpartition(":")[2]
            text = str(node.value)
            shown = repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"
            raise self._fail(node, path, f"cannot read {shown} as a YAML {kind} ({_reason(exc)})") from None

    def _mapping(self, node: MappingNode, path: YamlPath) -> LocatedDict:
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            raise self._fail(node, path, f"a merge key `<<` must name a mapping or a list of mappings "
                                         f"({exc.problem})") from None
        out = LocatedDict()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self._fail(key_node, path, "mapping keys must be plain scalars")
            key = self.convert(key_node, path)
            if isinstance(key, (int, float, bool)) or key is None:
                key = str(key_node.value)
            if not isinstance(key, str):
                raise self._fail(key_node, path, f"mapping keys must be names or numbers, got {key!r}")
            value = self.convert(value_node, path + (key,))
            line = key_node.start_mark.line + 1
            if key in out:
                first = out.key_lines[key]
                if plain(out[key]) != plain(value):
                    raise self._fail(key_node, path + (key,),
                                     f"duplicate key {key!r} with another value (first given on line {first})")
                self.warnings.append(f"{self.file or '<schedule>'}:{line}: {format_path(path + (key,))}: duplicate "
                                     f"key {key!r} repeats the value given on line {first}; the repetition is "
                                     "ignored")
                continue
            out.key_lines[key] = line
            out[key] = value
        return out


def plain(value: Any) -> Any:
    """A plain copy of located YAML data: its dicts and lists new, its scalars shared."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is not one of its values"
    text = str(exc).strip().splitlines()
    return text[0].split(";")[0] if text else type(exc).__name__
