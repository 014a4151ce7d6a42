"""Argument meanings: type annotations that tell the schedule builder how to check and convert YAML values.

A schedulable class declares its arguments in its constructor (or in its ``build`` classmethod) with ordinary
type hints, plus these annotations where a value means more than its type::

    @PRUNERS.register()
    class MyPruner(Pruner):
        def __init__(self, name: str, targets: ParamNames, amount: Fraction, every: PositiveInt = 1): ...

From the annotations alone the builder expands parameter-name patterns (``layer*.conv1.weight``), refuses a
name that matches nothing with a did-you-mean, checks types and ranges (every float finite unless annotated
``Annotated[float, NonFinite()]``) and reports each problem located in the schedule file: the same for
built-in and third-party classes. Constructor parameters named like a ``BuildContext`` field (``INJECTED``)
are supplied by the builder, not read from YAML. Values reach a component as plain Python (dict, list,
str, numbers), never as the loader's located containers.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import sys
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from .errors import DistillEEError
from .modules import expand_name, is_pattern, resolve_name, strip_module_prefix
from .registry import suggest

#: constructor parameters the builder supplies from its context instead of the schedule
INJECTED = ("name", "model", "optimizer", "example_input", "num_classes", "input_shape")

Path = Tuple[Any, ...]
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


class ArgumentError(DistillEEError):
    """A bad argument value; ``path`` is relative to where the value was given (``('weights', 2)``)."""

    def __init__(self, message: str, path: Path = (), *, suggestions: Optional[Sequence[str]] = None,
                 valid: Optional[Sequence[Any]] = None):
        self.message = message
        self.path = tuple(path)
        self.suggestions = list(suggestions or [])
        self.valid = list(valid) if valid is not None else None
        super().__init__(message)

    def under(self, *prefix: Any) -> "ArgumentError":
        """The same error with ``prefix`` in front of its path."""
        return ArgumentError(self.message, prefix + self.path, suggestions=self.suggestions, valid=self.valid)


class NameSource(Protocol):
    """What name-valued arguments are checked against (the schedule builder's context)."""

    def parameter_names(self) -> List[str]:
        """The model's parameter names."""

    def module_names(self) -> List[str]:
        """The model's module names."""

    def record_match(self, pattern: str, hits: List[str]) -> None:
        """Note which names a schedule's name or pattern resolved to (for ``distill-ee check``)."""


# --------------------------------------------------------------------------- meanings
class Meaning:
    """Metadata carried by ``Annotated[type, meaning]``: checks one value and converts it."""

    #: True when the meaning checks the value's type itself (the annotated base type is not checked first)
    checks_type = False

    def describe(self) -> str:
        """What a valid value is, for messages."""
        return "a valid value"

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The value to hand to the component; raises ArgumentError (path relative to the value)."""
        return value


@dataclass(frozen=True)
class Range(Meaning):
    """A number (or integer) within bounds; ``None`` bounds are open-ended."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    checks_type = True

    def describe(self) -> str:
        """``a number in [0, 1)``, ``an integer >= 1`` ..."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The value when it is a number of the right kind within the bounds."""
        ok = _is_int(value) if self.integer else _is_finite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ArgumentError(f"must be {self.describe()}, got {value!r}")
        return value


@dataclass(frozen=True)
class OneOf(Meaning):
    """One of a fixed set of values (close names are suggested)."""

    choices: Tuple[Any, ...]
    checks_type = True

    def describe(self) -> str:
        """``one of 'a', 'b'``."""
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The value when it is one of the choices."""
        if value not in self.choices:
            raise ArgumentError(f"{value!r} is not valid", suggestions=suggest(str(value), map(str, self.choices)),
                                valid=list(self.choices))
        return value


@dataclass(frozen=True)
class Checked(Meaning):
    """A value checked and converted by a function of its own (``check(value)``, raising ArgumentError)."""

    text: str
    check: Callable[[Any], Any]
    checks_type = True

    def describe(self) -> str:
        """What a valid value is."""
        return self.text

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """``check(value)``."""
        return self.check(value)


@dataclass(frozen=True)
class Count(Meaning):
    """A list of ``low`` to ``high`` items, counted before any item is checked (a list of a million entries is
    refused at once)."""

    low: int = 0
    high: Optional[int] = None
    what: str = "entries"

    def describe(self) -> str:
        """``a list of 2 to 8 entries``."""
        return f"a list of {self.low} to {self.high} {self.what}" if self.high is not None else \
            f"a list of at least {self.low} {self.what}"

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The list, when its length is within the bounds."""
        if isinstance(value, list) and (len(value) < self.low or (self.high is not None and len(value) > self.high)):
            raise ArgumentError(f"must be {self.describe()}, got {len(value):,}")
        return value


class NonFinite(Meaning):
    """Marks a float argument that may be ``.inf`` or ``.nan`` (floats are otherwise required finite)."""

    def describe(self) -> str:
        """``a number``."""
        return "a number"


class ParameterNames(Meaning):
    """A list of the model's parameter names or shell-style patterns, expanded to every name they match."""

    checks_type = True

    def describe(self) -> str:
        """``a list of parameter names``."""
        return "a list of parameter names"

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """Every parameter name the listed names and patterns match, in order."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ArgumentError("must be a list of parameter names")
        out: List[str] = []
        for i, name in enumerate(value):
            try:
                out.extend(h for h in match_parameter(name, names) if h not in out)
            except ArgumentError as err:
                raise err.under(i) from None
        return out


@dataclass(frozen=True)
class ParameterMap(Meaning):
    """A mapping of parameter names or patterns (``'*'``: any other weight) to values of type ``value``."""

    value: Any = Any
    checks_type = True

    def describe(self) -> str:
        """``a mapping of parameter names to values``."""
        return "a mapping of parameter names to values"

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The mapping with every pattern expanded to the names it matches and every value checked."""
        if not isinstance(value, Mapping):
            raise ArgumentError("must be a mapping of parameter names to values")
        out: Dict[str, Any] = {}
        for key, item in value.items():
            try:
                hits = ["*"] if key == "*" else match_parameter(key, names)
                checked = check_value(self.value, item, names)
            except ArgumentError as err:
                raise err.under(key) from None
            for hit in hits:
                out[hit] = checked
        return out


class ModuleNameMeaning(Meaning):
    """The name of one of the model's modules (Distiller's ``module.`` prefixes tolerated)."""

    checks_type = True

    def describe(self) -> str:
        """``a module name``."""
        return "a module name"

    def convert(self, value: Any, names: Optional[NameSource]) -> Any:
        """The model's own name for the module."""
        if not isinstance(value, str) or not value:
            raise ArgumentError(f"must be a module name, got {value!r}")
        if names is None:
            return value
        valid = names.module_names()
        hit = resolve_name(value, valid)
        if hit is None:
            raise ArgumentError(f"no module named {value!r} in the model", valid=valid,
                                suggestions=suggest(strip_module_prefix(value), valid))
        names.record_match(value, [hit])
        return hit


def match_parameter(name: Any, names: Optional[NameSource]) -> List[str]:
    """The parameter names ``name`` (a name or a pattern) matches; ArgumentError when none."""
    if not isinstance(name, str):
        raise ArgumentError(f"a parameter name must be a string, got {name!r}")
    if names is None:
        return [name]
    valid = names.parameter_names()
    hits = expand_name(name, valid)
    if not hits:
        what = "pattern" if is_pattern(name) else "parameter"
        raise ArgumentError(f"{what} {name!r} matches no parameter of the model",
                            suggestions=suggest(name.replace("module.", ""), valid), valid=valid)
    names.record_match(name, hits)
    return hits


class ParamMap:
    """``ParamMap[Fraction]``: a mapping of parameter names or patterns to values of that type."""

    def __class_getitem__(cls, value: Any) -> Any:
        return Annotated[Dict[str, value], ParameterMap(value)]


ParamNames = Annotated[List[str], ParameterNames()]
Fraction = Annotated[float, Range(0.0, 1.0, high_open=True)]
UnitInterval = Annotated[float, Range(0.0, 1.0)]
PositiveInt = Annotated[int, Range(1, integer=True)]
NonNegativeInt = Annotated[int, Range(0, integer=True)]
NonNegative = Annotated[float, Range(0.0)]
Positive = Annotated[float, Range(0.0, low_open=True)]
ModuleName = Annotated[str, ModuleNameMeaning()]


# --------------------------------------------------------------------------- checking values
def check_value(hint: Any, value: Any, names: Optional[NameSource] = None) -> Any:
    """``value`` checked against a type hint (meanings applied); ArgumentError when it does not fit."""
    value = plain(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _check_annotated(hint, args[0], value, names)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return _check_union(args, value, names)
    if origin is typing.Literal:
        return OneOf(tuple(args)).convert(value, names)
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.TypeVar)):
        return value
    if hint is type(None):
        if value is not None:
            raise ArgumentError(f"must be null, got {value!r}")
        return value
    if hint in (float, int, bool, str):
        return _check_simple(hint, value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _check_dataclass(hint, value, names)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return _check_fixed_tuple(hint, args, value, names)
    if origin in _SEQUENCES or hint in (list, tuple):
        return _check_sequence(hint, args[0] if args else Any, value, names)
    if origin in _MAPPINGS or hint is dict:
        if not isinstance(value, dict):
            raise ArgumentError(f"must be {describe(hint)}, got {type(value).__name__} {value!r}")
    return value


def _check_annotated(hint: Any, base: Any, value: Any, names: Optional[NameSource]) -> Any:
    meanings = [m for m in hint.__metadata__ if isinstance(m, Meaning)]
    for meaning in meanings:
        if isinstance(meaning, Count):
            meaning.convert(value, names)
    if any(isinstance(m, NonFinite) for m in meanings) and _is_number(value):
        return value
    if not any(m.checks_type for m in meanings):
        value = check_value(base, value, names)
    for meaning in meanings:
        value = meaning.convert(value, names)
    return value


def _check_dataclass(hint: type, value: Any, names: Optional[NameSource]) -> Any:
    """A mapping of the dataclass's fields, each checked by its annotation, turned into the dataclass.

    The dataclass may say what messages call it (``owner``) and what a valid value looks like (``shape``)."""
    owner = getattr(hint, "owner", hint.__name__)
    if not isinstance(value, dict):
        raise ArgumentError(getattr(hint, "shape", None) or f"{owner} must be a mapping, got {type(value).__name__} "
                                                            f"{value!r}")
    return hint(**bind(hint, value, owner=owner, names=names, mapping=True))


def _check_simple(hint: type, value: Any) -> Any:
    checks = {float: _is_finite, int: _is_int, bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}
    if not checks[hint](value):
        got = repr(value) if hint is float and _is_number(value) else f"{type(value).__name__} {value!r}"
        raise ArgumentError(f"must be {describe(hint)}, got {got}")
    return value


def _check_sequence(hint: Any, item: Any, value: Any, names: Optional[NameSource]) -> List[Any]:
    if not isinstance(value, (list, tuple)):
        raise ArgumentError(f"must be {describe(hint)}, got {type(value).__name__} {value!r}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(check_value(item, v, names))
        except ArgumentError as err:
            raise err.under(i) from None
    return out


def _check_fixed_tuple(hint: Any, items: Sequence[Any], value: Any, names: Optional[NameSource]) -> List[Any]:
    if not isinstance(value, (list, tuple)) or len(value) != len(items):
        raise ArgumentError(f"must be a list of {len(items)}, got {type(value).__name__} {value!r}")
    out = []
    for i, (item, v) in enumerate(zip(items, value)):
        try:
            out.append(check_value(item, v, names))
        except ArgumentError as err:
            raise err.under(i) from None
    return out


def _check_union(options: Sequence[Any], value: Any, names: Optional[NameSource]) -> Any:
    if value is None and type(None) in options:
        return None
    real = [o for o in options if o is not type(None)]
    errors: List[ArgumentError] = []
    for option in real:
        try:
            return check_value(option, value, names)
        except ArgumentError as err:
            errors.append(err)
    deepest = max(errors, key=lambda e: len(e.path))
    if len(real) == 1 or deepest.path:
        raise deepest
    raise ArgumentError(f"must be {' or '.join(describe(o) for o in real)}, got {type(value).__name__} {value!r}")


def describe(hint: Any) -> str:
    """A phrase for what ``hint`` accepts (``a number``, ``a list`` ...)."""
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        meanings = [m for m in hint.__metadata__ if isinstance(m, Meaning)]
        return meanings[0].describe() if meanings else describe(args[0])
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)}"
    if origin in _SEQUENCES or hint in (list, tuple):
        return "a list"
    if origin in _MAPPINGS or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def plain(value: Any) -> Any:
    """``value`` as plain Python containers (the YAML loader's located dicts and lists become dict and list)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(x: float) -> str:
    return format(x, "g")


# --------------------------------------------------------------------------- binding arguments
@dataclass
class Signature:
    """The schedule-visible arguments of a callable: parameters, resolved hints, whether it takes ``**kwargs``."""

    parameters: Dict[str, inspect.Parameter]
    hints: Dict[str, Any]
    takes_any: bool

    @property
    def user_arguments(self) -> List[str]:
        """Parameters a schedule gives (not supplied by the builder), in declaration order."""
        return [n for n in self.parameters if n not in INJECTED]

    @property
    def required(self) -> List[str]:
        """User arguments without a default."""
        return [n for n in self.user_arguments if self.parameters[n].default is inspect.Parameter.empty]


def signature_of(target: Callable[..., Any], skip: int = 0) -> Signature:
    """The arguments of ``target`` (a class: its constructor), skipping the first ``skip`` parameters."""
    func = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    params = list(inspect.signature(target).parameters.values())[skip:]
    named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    return Signature(named, _resolve_hints(func, named), takes_any)


def _resolve_hints(func: Callable[..., Any], params: Dict[str, inspect.Parameter]) -> Dict[str, Any]:
    """Each parameter's type hint, resolved one by one (one unresolvable hint does not hide the others)."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001  (a forward reference that cannot be resolved: go parameter by parameter)
        pass
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    namespace = {**vars(typing), **vars(collections.abc), **(vars(module) if module else {}),
                 **getattr(func, "__globals__", {})}
    hints: Dict[str, Any] = {}
    for name, param in params.items():
        ann = param.annotation
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # noqa: S307  (annotations of installed code, not user input)
            except Exception:  # noqa: BLE001  (an annotation naming something unknown: unchecked)
                ann = Any
        hints[name] = ann
    return hints


def bind(target: Callable[..., Any], values: Mapping[str, Any], *, owner: str,
         names: Optional[NameSource] = None, supply: Optional[Callable[[str], Any]] = None,
         skip: int = 0, mapping: bool = False, supplied: Sequence[str] = ()) -> Dict[str, Any]:
    """Keyword arguments for ``target`` from schedule ``values``: unknown or missing names refused, every
    value checked and converted by its annotation; builder-supplied parameters filled by ``supply``.
    ``mapping``: the values are the keys of a YAML block (a dataclass's fields), and messages say so; then only
    the fields named in ``supplied`` (given by the caller) are not the YAML's."""
    sig = signature_of(target, skip)
    user = [n for n in sig.parameters if n not in supplied] if mapping else sig.user_arguments
    required = [n for n in user if sig.parameters[n].default is inspect.Parameter.empty]
    for key in values:
        if key not in user and not (sig.takes_any and key not in INJECTED):
            what = f"unknown key {key!r} in {owner}" if mapping else f"unknown argument of {owner}"
            raise ArgumentError(what, (key,), suggestions=suggest(str(key), user), valid=user)
    for name in required:
        if name not in values:
            what = f"{owner} needs `{name}`" if mapping else f"missing argument {name!r} of {owner}"
            raise ArgumentError(what, valid=user)
    out: Dict[str, Any] = {}
    if supply is not None:
        out.update({name: supply(name) for name in sig.parameters if name in INJECTED})
    for key, value in values.items():
        try:
            out[key] = check_value(sig.hints.get(key, Any), value, names)
        except ArgumentError as err:
            raise err.under(key) from None
    return out
