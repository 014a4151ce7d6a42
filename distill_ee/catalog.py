"""Every class a schedule may name, with its arguments, as Markdown: docs/classes.md is generated from it.

``python -m distill_ee.catalog`` prints the page; ``python -m distill_ee.catalog --write`` writes
``docs/classes.md`` (atomically). The page has one table per registry (``distill_ee.registry.registries()``,
after ``load_components()``: built-in classes and installed plugins), one row per registered name, sorted:
its aliases, the schedule section it is written in, the first paragraph of its docstring and its arguments,
each ``name: what`` with its default. ``what`` comes from the annotation: an ``Annotated[..., Meaning]`` is
described by the meaning, anything else by its type's name. A class with a ``build(ctx, **arguments)``
classmethod is described through ``build``, any other through its constructor, as the schedule builder binds
them; arguments the builder supplies (``distill_ee.arguments.INJECTED``) are left out. Exit criteria take no
arguments (their threshold's range is shown), and branch layers are builder functions whose options follow the
input shape. A last table lists the ``args`` each section's policy entries take.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import math
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .arguments import INJECTED, Meaning, Signature, signature_of
from .atomic import atomic_write_text
from .components import load_components
from .registry import BRANCH_LAYERS, EXIT_CRITERIA, Registry, registries, sections

#: where ``--write`` puts the page: docs/classes.md of the checkout the package lives in
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "classes.md"
#: the command that regenerates the page (quoted in the page and in the test that compares it)
COMMAND = "python -m distill_ee.catalog --write"
#: where the names of registries without a section of their own are written in a schedule
NAMED_IN = {id(EXIT_CRITERIA): "`early_exits` (`criterion:`)",
            id(BRANCH_LAYERS): "`early_exits` (`branch:`, a decider's `head:`)"}

HEADER = f"""# Classes a schedule may name

Every class (and branch layer, and exit criterion) a schedule may name, with the arguments it takes, one
table per registry; the last table lists the `args` of each section's policy entries. The page is generated
from the code by `{COMMAND}` (`distill_ee/catalog.py`): do not edit it by hand.
How a schedule is written is in [Schedules](schedules.md), early-exit instances in [Early exit](early-exit.md),
your own classes in [Plugins](plugins.md); back to the [front page](../README.md) or the [docs index](README.md).

Each argument is written `name: what`, then its default, or *required*. Arguments the schedule loader fills
in itself ({", ".join(f"`{n}`" for n in INJECTED)}) are left out.
"""


@dataclass(frozen=True)
class Argument:
    """One argument a schedule may write: its name, what it takes, its default (None: none shown), if required."""

    name: str
    what: str = ""
    default: Optional[str] = None
    required: bool = False

    def markdown(self) -> str:
        """``name``: what, then its default or *required*."""
        tail = "*required*" if self.required else None if self.default is None else f"default `{self.default}`"
        head = f"`{self.name}`: {self.what}" if self.what else f"`{self.name}`"
        return f"{head}, {tail}" if tail else head


# --------------------------------------------------------------------------- values and types as text
def type_text(hint: Any) -> str:
    """What an annotation accepts: a Meaning's description, else the plain type name (``float``, ``List[str]``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return "any"
    if hint is type(None):
        return "null"
    if origin is typing.Annotated:
        meanings = [m for m in hint.__metadata__ if isinstance(m, Meaning)]
        return meanings[0].describe() if meanings else type_text(args[0])
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return _union_text(args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return _generic_text(origin, args, hint)
    if isinstance(hint, list):
        return "[" + ", ".join(type_text(a) for a in hint) + "]"
    if dataclasses.is_dataclass(hint):
        return "a mapping {" + ", ".join(f.name for f in dataclasses.fields(hint)) + "}"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _union_text(args: Sequence[Any]) -> str:
    parts = [type_text(a) for a in args if a is not type(None)]
    return " or ".join(parts + (["null"] if type(None) in args else []))


def _generic_text(origin: Any, args: Sequence[Any], hint: Any) -> str:
    if origin is tuple and len(args) == 2 and args[0] == args[1]:
        return f"a pair of ({type_text(args[0])})"
    name = getattr(hint, "_name", None) or getattr(origin, "__name__", str(origin))
    return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name


def value_text(value: Any) -> str:
    """A default as a schedule would write it (``null``, ``true``, ``[1, 2]``), never a memory address."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".inf" if value > 0 else "-.inf" if value < 0 else ".nan"
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, (int, float, str)):
        return str(value) if value != "" else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{value_text(k)}: {value_text(v)}" for k, v in value.items()) + "}"
    return getattr(value, "__name__", None) or type(value).__name__


def cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (one line, pipes escaped, reST literals as code)."""
    text = " ".join(text.split()).replace("``", "`")
    return text.replace("|", "\\|")


def summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return cell(doc.strip().split("\n\n")[0])


# --------------------------------------------------------------------------- arguments
def schedule_signature(obj: Any) -> Signature:
    """The arguments a schedule gives: those of the class's ``schedule_arguments`` when it declares them (a
    ``build(ctx, **arguments)`` that checks them itself), else a ``build`` classmethod's (after ``ctx``), else
    the constructor's."""
    declared = getattr(obj, "schedule_arguments", None)
    if inspect.isclass(obj) and declared is not None:
        return signature_of(declared)
    builder = getattr(obj, "build", None)
    if inspect.isclass(obj) and inspect.ismethod(builder):
        return signature_of(builder, 1)
    return signature_of(obj)


def signature_arguments(sig: Signature) -> List[Argument]:
    """Every argument of ``sig`` a schedule writes, in declaration order."""
    out = []
    for name in sig.user_arguments:
        default = sig.parameters[name].default
        required = default is inspect.Parameter.empty
        out.append(Argument(name, type_text(sig.hints.get(name, Any)), None if required else value_text(default),
                            required))
    return out


def criterion_arguments(obj: Any) -> List[str]:
    """An exit criterion takes no arguments; what its threshold must be, when it says."""
    try:
        valid = obj().check_threshold(math.nan)
    except Exception:  # noqa: BLE001  (a criterion that needs more to be built: nothing to show)
        valid = None
    text = "none: named by `criterion:`"
    return [text, f"threshold: {valid}"] if isinstance(valid, str) else [text]


def argument_cells(registry: Registry, obj: Any) -> List[str]:
    """The argument lines of one registered object, as the schedule builder reads them."""
    if registry is EXIT_CRITERIA:
        return criterion_arguments(obj)
    try:
        sig = signature_of(obj, 1) if registry is BRANCH_LAYERS else schedule_signature(obj)
    except (TypeError, ValueError):  # not callable, or a builtin without a signature
        return []
    found = [a.markdown() for a in signature_arguments(sig)]
    if sig.takes_any and not found:
        return ["any mapping, checked by the class"]
    if sig.takes_any:
        found.append("any other key, checked by the class")
    return found or ["none"]


# --------------------------------------------------------------------------- tables
def section_of(registry: Registry) -> str:
    """The schedule section whose components ``registry`` names (or where else a schedule writes them)."""
    names = [s.name for s in sections() if s.registry is registry]
    return ", ".join(f"`{n}`" for n in names) or NAMED_IN.get(id(registry), "")


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def registry_markdown(registry: Registry) -> str:
    """One registry's table: name, aliases, section, summary, arguments."""
    where = section_of(registry)
    rows = ["| name | aliases | section | what it is | arguments |", "|---|---|---|---|---|"]
    for name in registry.names():
        obj = registry.get(name)
        aliases = ", ".join(f"`{a}`" for a in registry.aliases(name))
        args = "<br>".join(cell(a) for a in argument_cells(registry, obj))
        rows.append(f"| `{name}` | {aliases} | {where} | {summary(obj)} | {args} |")
    return f"## {registry.kind}\n\n" + "\n".join(rows) + "\n"


def policies_markdown() -> str:
    """The ``args`` a policy entry of each section may give."""
    rows = ["| section | policy entry | args |", "|---|---|---|"]
    for section in sections():
        fields = getattr(section.policy, "Args", None)
        args = [a.markdown() for a in signature_arguments(signature_of(fields))] if fields else []
        rows.append(f"| `{section.name}` | `{section.policy_key}` | {'<br>'.join(map(cell, args)) or 'none'} |")
    return "## Policy entries\n\n" + "\n".join(rows) + "\n"


def markdown() -> str:
    """The whole page: every registry's table, then the policy entries'."""
    load_components()
    kinds = registries()
    contents = " · ".join(f"[{r.kind}](#{anchor(r.kind)})" for r in kinds) + " · [policy entries](#policy-entries)"
    parts = [HEADER, contents + "\n", *(registry_markdown(r) for r in kinds), policies_markdown()]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the page, or write it with ``--write`` (to ``--output``, default docs/classes.md)."""
    parser = argparse.ArgumentParser(prog="python -m distill_ee.catalog", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the page instead of printing it")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help="with --write: where (docs/classes.md)")
    args = parser.parse_args(argv)
    text = markdown()
    if not args.write:
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
