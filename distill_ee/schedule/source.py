"""Safe YAML reading that remembers where every key and item came from (file and line)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ScheduleError

PathKey = Union[str, int]
YamlPath = Tuple[PathKey, ...]

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

    def __init__(self, data: LocatedDict, file: Optional[str]):
        self.data = data
        self.file = file

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


def parse_yaml(text: str, file: Optional[str] = None) -> ScheduleSource:
    """Parse schedule text with PyYAML's safe loader; duplicate keys and object tags are errors."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ScheduleError(f"not valid YAML: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    if root is None:
        raise ScheduleError("the schedule is empty", file=file, line=1)
    data = _Converter(loader, file).convert(root, ())
    if not isinstance(data, LocatedDict):
        raise ScheduleError("the schedule must be a mapping of sections (version, pruners, policies ...)",
                            file=file, line=1)
    return ScheduleSource(data, file)


class _Converter:
    """Turns composed YAML nodes into Located containers, checking tags and duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, file: Optional[str]):
        self.loader = loader
        self.file = file

    def _fail(self, node: Node, path: YamlPath, message: str) -> ScheduleError:
        return ScheduleError(message, file=self.file, line=node.start_mark.line + 1, path=format_path(path))

    def convert(self, node: Node, path: YamlPath) -> Any:
        if node.tag not in _PLAIN_TAGS:
            raise self._fail(node, path, f"YAML tag {node.tag!r} is not allowed: schedules hold plain data only "
                                         "(tags that construct Python objects are refused)")
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            out = LocatedList()
            out.line = node.start_mark.line + 1
            for i, item in enumerate(node.value):
                out.append(self.convert(item, path + (i,)))
                out.item_lines.append(item.start_mark.line + 1)
            return out
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: YamlPath) -> LocatedDict:
        self.loader.flatten_mapping(node)
        out = LocatedDict()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self._fail(key_node, path, "mapping keys must be plain scalars")
            key = self.convert(key_node, path)
            if isinstance(key, (int, float, bool)) or key is None:
                key = str(key_node.value)
            if key in out:
                raise self._fail(key_node, path + (key,),
                                 f"duplicate key {key!r} (first given on line {out.key_lines[key]})")
            out.key_lines[key] = key_node.start_mark.line + 1
            out[key] = self.convert(value_node, path + (key,))
        return out
