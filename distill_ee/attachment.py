"""Attachments: what a schedule adds to a user's model beside its own layers, one protocol for every kind.

An attachment is an ``nn.Module`` the model holds under one attribute: exit branches (``model.early_exits``),
routing (``model.routing``), simulated quantization (``model.quantization``), or a plugin's own kind.
``attach(model, attachment)``:

* registers it as that submodule, so the backbone's parameter names stay as they are and the attachment's
  weights and extra state travel with ``model.state_dict()``; the submodule is held beside the model's
  layers, never among them (``LayerDict``), so a model that runs its own children (``nn.Sequential``, an
  ``nn.ModuleList`` subclass) neither runs nor counts it;
* calls its ``install(model)``, which changes how the model runs (forward hooks, replaced forwards) and
  returns a handle for each change; the handles are kept, and ``detach`` calls ``uninstall``, which removes
  them;
* records one structure step of its ``kind`` (``{"kind", "name", **step_config()}``), from which
  ``from_step`` builds an equal attachment on a fresh model when a checkpoint is loaded; the step's replay,
  undo and redo (optimizer groups swapped, mask owners told) are written once, here.

A new kind is one subclass and its registration; registered in a schedule section as well, a schedule attaches
it by name (``Attachment.build`` checks its constructor's arguments like any component's)::

    @EXTENSIONS.register()
    @register_attachment
    class AddConstant(Attachment):
        kind = "add_constant"          # the structure step's kind
        attribute = "add_constant"     # where the model holds it
        def __init__(self, layer: ModuleName, value: float = 1.0, name: str = ""): ...
        def install(self, model): return [model.get_submodule(self.layer).register_forward_hook(...)]
        def step_config(self): return {"layer": self.layer, "value": self.value}
        @classmethod
        def from_step(cls, model, step): return cls(step["layer"], step["value"], name=step["name"])

The rest of the framework asks ``attachment_of(model, kind)``, ``attachments(model)`` and
``backbone_parameters(model)`` (every parameter of no attachment), never an attribute name.
"""
from __future__ import annotations

import contextlib
from collections.abc import ItemsView, KeysView, ValuesView
from typing import (Any, Callable, ClassVar, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple, Type,
                    TypeVar, Union)

from torch import nn

from .arguments import ArgumentError, bind, check_value
from .errors import AttachmentError, CheckpointError, DistillEEError, ScheduleError
from .modules import is_wrapper, unwrap
from .pruning.masks import notify_parameters_replaced
from .registry import ATTACHMENTS
from .structure import STEP_KINDS, ReplayContext, Step, StepKind, forget_step, record_step, structure_steps
from .structure import swap_into_optimizer

A = TypeVar("A", bound="Attachment")
#: the instance attribute (outside the module's state) holding what ``install`` returned
HANDLES_ATTR = "_attachment_handles"


class Handle(Protocol):
    """Something ``install`` changed on the model, undone by ``remove()`` (torch's hook handles are ones)."""

    def remove(self) -> None:
        """Undo the change."""


class Attachment(nn.Module):
    """A module attached to a user's model under ``attribute``, recorded as one structure step of ``kind``."""

    #: the structure step's kind (and this kind's key in ``ATTACHMENTS``)
    kind: ClassVar[str] = ""
    #: the model attribute that holds the attachment
    attribute: ClassVar[str] = ""
    #: what messages call this kind (``early exits``)
    noun: ClassVar[str] = ""
    #: True when the attachment's parameters take part in a training step only while a policy trains them
    #: (exit branches, routing deciders): ``idle_parameters`` then leaves out those no policy trains now
    trained_by_policies: ClassVar[bool] = False
    #: the word for its part in reports (``params_<summary_key>`` in summary.json); the kind by default
    summary_key: ClassVar[str] = ""
    #: the annotation (a dataclass of fields, usually) that a saved step's fields besides ``kind`` and ``name``
    #: must fit before ``from_step`` builds anything from them; None: any
    step_schema: ClassVar[Any] = None
    #: the schedule instance that attached it
    instance_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.summary_key:
            cls.summary_key = cls.kind
        if "schedule_arguments" not in cls.__dict__:
            cls.schedule_arguments = cls  # as a schedule component: its constructor's arguments (``build``)

    def install(self, model: nn.Module) -> List[Handle]:
        """Make ``model`` run through this attachment; a handle for each change (none by default)."""
        return []

    def uninstall(self, model: nn.Module) -> None:
        """Undo what ``install`` did: remove its handles, newest first (a kind with more to undo extends this)."""
        for handle in reversed(self.__dict__.pop(HANDLES_ATTR, [])):
            handle.remove()

    def step_config(self) -> Dict[str, Any]:
        """Plain values (and tensors) that ``from_step`` rebuilds this attachment from."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it is rebuilt (step_config)")

    @classmethod
    def from_step(cls: Type[A], model: nn.Module, step: Mapping[str, Any]) -> A:
        """An attachment equal to the one that recorded ``step``, built for ``model`` (not attached yet)."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a checkpoint (from_step)")

    @classmethod
    def build(cls: Type[A], ctx: Any, **arguments: Any) -> A:
        """As a schedule component (a kind registered in a section, e.g. ``extensions``): construct it from the
        schedule's arguments, checked by the constructor's annotations, attach it to ``ctx.model`` and hand its
        parameters to the optimizer."""
        attachment = cls(**bind(cls, arguments, owner=cls.__name__, names=ctx, supply=ctx.supply))
        attach(ctx.model, attachment)
        ctx.add_parameters(attachment.parameters())
        return attachment

    def export_problem(self) -> Optional[str]:
        """What the exporters cannot write for a model carrying this attachment, and what to do instead
        (``routed blocks (SkipNet/BlockDrop): their decisions run in Python; ...``); None: they can."""
        return None

    @contextlib.contextmanager
    def exported(self) -> Iterator[None]:
        """The state the model is exported in, for the length of the block (unchanged by default)."""
        yield

    def user_view(self, model: nn.Module) -> Any:
        """What users work with for this attachment of ``model``: the attachment itself, or a richer view."""
        return self

    @classmethod
    def describe_step(cls, step: Mapping[str, Any]) -> str:
        """A few words naming a step of this kind, for messages (``early exits 'branchy'``)."""
        return f"{cls.noun or cls.kind} {step.get('name', '')!r}"


def register_attachment(cls: Type[A]) -> Type[A]:
    """Class decorator: register an Attachment kind and the structure step that replays it."""
    if not (isinstance(cls, type) and issubclass(cls, Attachment)) or not cls.kind or not cls.attribute:
        raise TypeError("register an Attachment subclass that names its `kind` and `attribute`")
    ATTACHMENTS.add(cls.kind, cls)
    STEP_KINDS.add(cls.kind, AttachmentStep(cls))
    return cls


def unregister_attachment(kind: str) -> None:
    """Remove a kind and its structure step (a plugin being unloaded, a test cleaning up)."""
    ATTACHMENTS.remove(kind)
    STEP_KINDS.remove(kind)


# --------------------------------------------------------------------------- attach / detach / find
def attach(model: nn.Module, attachment: A) -> A:
    """Attach ``attachment`` to ``model`` (the model inside a wrapper): submodule, installed, step recorded."""
    inner = unwrap(model)
    kind, attribute = type(attachment).kind, type(attachment).attribute
    if is_wrapper(model) and not isinstance(model, nn.DataParallel):
        raise AttachmentError(f"attach {type(attachment).noun or kind} before wrapping the model in "
                              "DistributedDataParallel (it fixes the parameters it synchronises when it is built)")
    if kind not in ATTACHMENTS:
        raise AttachmentError(f"{type(attachment).__name__} is not a registered attachment kind "
                              "(decorate it with @register_attachment)")
    existing = attachment_of(inner, kind)
    if existing is not None:
        raise AttachmentError(f"the model already has {type(existing).describe_step({'name': existing.instance_name})}"
                              f"; a model takes one {kind} attachment")
    if hasattr(inner, attribute):
        raise AttachmentError(f"the model already has an attribute {attribute!r}, where {kind} would be attached")
    hold_beside_layers(inner)
    inner.add_module(attribute, attachment)
    try:
        handles = list(attachment.install(inner))
    except BaseException:
        delattr(inner, attribute)
        release_layers(inner)
        raise
    attachment.__dict__[HANDLES_ATTR] = handles
    record_step(inner, {"kind": kind, "name": attachment.instance_name, **attachment.step_config()})
    return attachment


def detach(model: nn.Module, kind: Union[str, Type[A]]) -> Optional[A]:
    """Remove the attachment of ``kind``: its handles, the submodule and its structure step; the removed one."""
    inner = unwrap(model)
    found = attachment_of(inner, kind)
    if found is None:
        return None
    found.uninstall(inner)
    delattr(inner, type(found).attribute)
    release_layers(inner)
    for step in structure_steps(inner):
        if step.get("kind") == type(found).kind:
            forget_step(inner, step)
    return found


class LayerDict(Dict[str, Optional[nn.Module]]):
    """A model's ``_modules`` while something is attached to it: its layers, with its attachments beside them.

    Iteration, ``keys()``, ``values()`` and ``len()`` (what ``nn.Sequential`` and ``nn.ModuleList`` run, index
    and count) give the layers only. ``items()``, which torch walks for ``children()``,
    ``named_modules()``, ``parameters()``, ``state_dict()``, ``load_state_dict()``, ``.to()`` and ``.train()``,
    gives the attachments too, except while the model's own forward runs, so a forward over ``self.children()``
    meets its layers only as well. Looking an entry up by name (``model.early_exits``) always finds it.
    """

    __slots__ = ("running",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: how many calls of the model's forward are under way
        self.running = 0

    def __iter__(self) -> Iterator[str]:
        return (name for name, module in dict.items(self) if not isinstance(module, Attachment))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self))

    def keys(self) -> KeysView:  # type: ignore[override]
        """The layers' names."""
        return KeysView(self)

    def values(self) -> ValuesView:  # type: ignore[override]
        """The layers."""
        return ValuesView(self)

    def items(self) -> Any:
        """Every submodule with its name, attachments last; the layers only while the model's forward runs."""
        return ItemsView(self) if self.running else dict.items(self)

    def copy(self) -> "LayerDict":
        """A LayerDict of the same entries (``DataParallel``'s replicas copy ``_modules``)."""
        return LayerDict(dict.items(self))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (LayerDict, (list(dict.items(self)),))


def _forward_begins(model: nn.Module, args: Any) -> None:
    layers = model.__dict__.get("_modules")
    if isinstance(layers, LayerDict):
        layers.running += 1


def _forward_ends(model: nn.Module, args: Any, output: Any) -> None:
    layers = model.__dict__.get("_modules")
    if isinstance(layers, LayerDict) and layers.running:
        layers.running -= 1


@contextlib.contextmanager
def layers_only(model: nn.Module) -> Iterator[nn.Module]:
    """For the block, ``model``'s children are its layers only, as while its forward runs (for a tracer that
    calls ``forward`` itself)."""
    layers = model.__dict__.get("_modules")
    if not isinstance(layers, LayerDict):
        yield model
        return
    layers.running += 1
    try:
        yield model
    finally:
        layers.running -= 1


def hold_beside_layers(model: nn.Module) -> None:
    """Give ``model`` a LayerDict for its submodules (once), its forward marked while it runs."""
    if isinstance(model.__dict__.get("_modules"), LayerDict):
        return
    model.__dict__["_modules"] = LayerDict(dict.items(model._modules))
    model.register_forward_pre_hook(_forward_begins)
    model.register_forward_hook(_forward_ends, prepend=True, always_call=True)


def release_layers(model: nn.Module) -> None:
    """Give ``model`` a plain dict for its submodules again once it holds no attachment."""
    layers = model.__dict__.get("_modules")
    if not isinstance(layers, LayerDict) or any(isinstance(m, Attachment) for m in dict.values(layers)):
        return
    model.__dict__["_modules"] = dict(dict.items(layers))
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook is _forward_begins or hook is _forward_ends]:
            del hooks[key]
            model._forward_hooks_always_called.pop(key, None)


def attachment_of(model: nn.Module, kind: Union[str, Type[A]]) -> Optional[A]:
    """The attachment of ``kind`` (a kind name or an Attachment class) of ``model``; None when it has none."""
    cls = kind if isinstance(kind, type) else ATTACHMENTS.get(kind) if kind in ATTACHMENTS else None
    if cls is None:
        return None
    found = getattr(unwrap(model), cls.attribute, None)
    return found if isinstance(found, cls) else None


def attachments(model: nn.Module) -> List[Attachment]:
    """Every attachment inside ``model`` (wrappers and nested models included), in the order attached."""
    return [m for m in model.modules() if isinstance(m, Attachment)]


def named_attachments(model: nn.Module) -> List[Tuple[str, Attachment]]:
    """Every attachment inside ``model`` with its module name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Attachment)]


def _side_ids(model: nn.Module) -> Tuple[set, set]:
    """(ids of every attachment's parameters, ids of every attachment's modules)."""
    found = attachments(model)
    return ({id(p) for a in found for p in a.parameters()}, {id(m) for a in found for m in a.modules()})


def backbone_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The named parameters of ``model`` that belong to no attachment (names as ``model`` gives them)."""
    side, _ = _side_ids(model)
    return [(n, p) for n, p in model.named_parameters() if id(p) not in side]


def backbone_modules(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model`` outside every attachment."""
    _, side = _side_ids(model)
    return [m for m in model.modules() if id(m) not in side]


def export_problems(model: nn.Module) -> List[str]:
    """What keeps the exporters from writing ``model``: one line per attachment that says why."""
    return [problem for a in attachments(model) for problem in [a.export_problem()] if problem]


@contextlib.contextmanager
def exporting(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in the state every attachment is exported in (``Attachment.exported``), for the block."""
    with contextlib.ExitStack() as stack:
        for attachment in attachments(model):
            stack.enter_context(attachment.exported())
        yield model


def idle_parameters(model: nn.Module, policies: List[Any]) -> List[nn.Parameter]:
    """Attachment parameters a training step does not reach now: those of kinds trained only by policies
    (``trained_by_policies``) that none of ``policies`` trains at present (``Policy.trained_parameters``)."""
    busy = {id(p) for policy in policies for p in policy.trained_parameters()}
    return [p for a in attachments(model) if type(a).trained_by_policies for p in a.parameters()
            if id(p) not in busy]


class AttachmentView:
    """What a component offers on the attachment of one kind of a model (``EarlyExits``, ``Routing``): the
    attachment is looked up on the model each time, so a checkpoint that replaced it is seen at once."""

    #: the kind of attachment the view is of
    attachment_type: ClassVar[Type[Attachment]] = Attachment

    def __init__(self, model: nn.Module):
        self.model = model
        self.attachment  # a model without one is refused here

    @classmethod
    def of(cls, model: nn.Module) -> Optional[Any]:
        """The view of ``model``'s attachment (None when it has none)."""
        return cls(model) if attachment_of(model, cls.attachment_type) is not None else None

    @property
    def attachment(self) -> Any:
        """The model's attachment of this kind; DistillEEError when it has none."""
        found = attachment_of(self.model, self.attachment_type)
        if found is None:
            what = self.attachment_type.noun or self.attachment_type.kind
            raise DistillEEError(f"{type(unwrap(self.model)).__name__} has no {what} attached")
        return found

    @property
    def name(self) -> str:
        """The schedule instance name it was attached under."""
        return self.attachment.instance_name


# --------------------------------------------------------------------------- changing how the model runs
class InstanceAttributes:
    """Attributes set on one module instance (outside its state: not parameters, buffers or submodules);
    ``remove()`` takes them away again. A name the instance holds already is refused."""

    def __init__(self, module: nn.Module, values: Mapping[str, Any]):
        taken = [name for name in values if name in module.__dict__]
        if taken:
            what = "its forward is replaced" if taken[0] == "forward" else f"it has an attribute {taken[0]!r}"
            raise AttachmentError(f"cannot attach to {type(module).__name__}: {what} already (by another "
                                  "attachment or by the model's own code)")
        module.__dict__.update(values)
        self.module = module
        self.names = list(values)

    def remove(self) -> None:
        """Take the attributes away."""
        for name in self.names:
            self.module.__dict__.pop(name, None)


def replace_forward(module: nn.Module, forward: Callable[..., Any]) -> InstanceAttributes:
    """Make ``module(...)`` call ``forward(...)`` instead of its class's forward; the handle that undoes it."""
    return InstanceAttributes(module, {"forward": forward})


def own_forward(module: nn.Module) -> Callable[..., Any]:
    """The module's class ``forward``, bound to it (what runs when no attachment replaced it)."""
    return type(module).forward.__get__(module)


# --------------------------------------------------------------------------- the structure step
class AttachmentStep(StepKind):
    """Replays, undoes and redoes the structure step of one attachment kind."""

    def __init__(self, cls: Type[Attachment]):
        self.cls = cls

    def _key(self, step: Step) -> str:
        return f"{self.cls.kind}:{step.get('name', '')}"

    def check(self, step: Step) -> None:
        """The step's ``name`` a string and its other fields fitting the kind's ``step_schema``."""
        if not isinstance(step.get("name", ""), str):
            raise CheckpointError(f"malformed step: 'name' must be a string, got {step.get('name')!r}")
        if self.cls.step_schema is None:
            return
        try:
            check_value(self.cls.step_schema, {k: v for k, v in step.items() if k not in ("kind", "name")})
        except ArgumentError as err:
            where = ".".join(str(p) for p in err.path)
            raise CheckpointError(f"malformed step: {where + ': ' if where else ''}{err.message}") from None

    def replay(self, model: nn.Module, step: Step, ctx: ReplayContext) -> Any:
        """Attach the saved attachment (fresh weights: the checkpoint's are loaded afterwards)."""
        inner = unwrap(model)
        what = self.cls.noun or self.cls.kind
        try:
            attachment = self.cls.from_step(inner, step)
            attach(inner, attachment)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"malformed {what} step ({type(err).__name__}: {err})") from None
        except ScheduleError as err:
            raise CheckpointError(f"the saved {what} does not fit this model: {err.message}") from None
        except DistillEEError as err:
            raise CheckpointError(f"the saved {what} does not fit this model: {err}") from None
        swap_into_optimizer(ctx, ctx.detached.pop(self._key(step), None), list(attachment.parameters()))
        notify_parameters_replaced(ctx.masks)
        return attachment.user_view(model)

    def undo(self, model: nn.Module, step: Step, ctx: ReplayContext) -> None:
        """Detach it; its optimizer group is refilled with the new parameters when it comes back."""
        removed = detach(model, self.cls)
        if removed is not None:
            ctx.detached[self._key(step)] = list(removed.parameters())
        notify_parameters_replaced(ctx.masks)

    def state_prefixes(self, step: Step) -> List[str]:
        """The attachment's ``state_dict`` keys: ``<attribute>.``."""
        return [f"{self.cls.attribute}."]

    def describe(self, step: Step) -> str:
        """The kind's own words for the step."""
        return self.cls.describe_step(step)

