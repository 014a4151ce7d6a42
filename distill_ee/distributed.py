"""Training on several processes with torch.distributed (torchrun, DistributedDataParallel); no launcher of ours.

What a user's own loop adds, launched with ``torchrun --nproc_per_node N train.py``::

    distill_ee.distributed.init_from_env()                 # the process group torchrun describes
    scheduler = distill_ee.load_schedule(model, optimizer, "schedule.yaml", example_input=x)  # exits first
    model = distill_ee.distributed.wrap(model, scheduler)   # DDP, rebuilt when thinning replaces parameters
    ...                                                      # the README's loop, unchanged
    if distill_ee.distributed.is_main():                    # rank 0 writes checkpoints and logs
        distill_ee.save_checkpoint(...)

Consistency across ranks:

* **Masks.** After each hook in which a policy may have changed masks, the scheduler has the processes agree on
  which masks changed on any of them and broadcasts those, with the weights they mask, from rank 0: random
  masks (BernoulliFilterPruner) and data-dependent ones are the same on every rank (``share_masks``).
* **Attachments.** An exit branch, a routing gate or a learned clipping value is idle in the epochs no policy
  trains it (``distill_ee.attachment.idle_parameters``); DDP is rebuilt without it then (and with it again when a
  policy trains it), which costs nothing per step; ``find_unused_parameters=True`` would cost a graph traversal
  per step (``benchmarks/ddp_overhead.py`` measures both).
* **Thinning.** It replaces parameters; the scheduler's masks tell their listeners, and the ``Replicated``
  wrapper rebuilds its DDP on every rank at the same hook.
* **Calibration and sensitivity** run on rank 0; ``share_attachments`` broadcasts every attachment's state
  (the exits' thresholds and criteria, branch weights with temperatures folded in, routing and quantization
  state) to the other ranks.
"""
from __future__ import annotations

import gc
import os
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .attachment import attachments
from .attachment import idle_parameters as attachment_idle_parameters
from .errors import ConfigError
from .modules import model_device


def is_distributed() -> bool:
    """True in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and outside a process group): the process that writes files and logs."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its machine, as torchrun sets it (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher using its environment) started this process with others."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), known before the process group exists."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def init_from_env(backend: Optional[str] = None) -> bool:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU unless ``backend`` says); True
    when this process is one of several."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl", "mpi", "ucc"):
            raise ConfigError(f"unknown distributed backend {backend!r} (valid: gloo, nccl, mpi, ucc)")
        dist.init_process_group(backend)
    return is_distributed()


class _WithPendingOutputs(nn.Module):
    """The model's forward, returning also the tensors a loss term will take from elsewhere (exit logits), so
    that DDP's search for unused parameters starts from everything the loss reaches."""

    def __init__(self, module: nn.Module, pending: Callable[[], List[torch.Tensor]]):
        super().__init__()
        self.module = module
        self.pending = pending

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``(model output, pending tensors)``."""
        output = self.module(*args, **kwargs)
        return output, self.pending()


class Replicated(nn.Module):
    """DistributedDataParallel around ``module`` that follows the model's changes on every rank at once.

    DDP fixes the parameters it averages when it is built, so it is rebuilt (a collective: every rank does it in
    the same step) when thinning replaces parameters, and when the set of ``idle`` parameters changes: exit
    branches whose policy is not running take no part in the forward pass, and DDP is built without them
    (they are frozen while it is built), which costs nothing per step, unlike ``find_unused_parameters``.
    Its ``state_dict`` is the model's with ``module.`` prefixes; ``module`` is the model itself.
    """

    #: declares that ``module`` is the wrapped model (``distill_ee.modules.unwrap`` looks for it)
    wraps_module = True

    def __init__(self, module: nn.Module, idle: Optional[Callable[[], List[nn.Parameter]]] = None,
                 pending: Optional[Callable[[], List[torch.Tensor]]] = None, **ddp_kwargs: Any):
        super().__init__()
        self.module = module
        self.ddp_kwargs = ddp_kwargs
        self.__dict__.update(_idle=idle, _pending=pending, _built_idle=None, rebuilds=0)
        self.rebuild()

    def _idle_now(self) -> List[nn.Parameter]:
        idle = self.__dict__["_idle"]
        return [p for p in idle() if p.requires_grad] if idle is not None else []

    def rebuild(self) -> None:
        """A new DDP over the module's current parameters, idle ones left out (every rank calls it together)."""
        idle = self._idle_now()
        pending = self.__dict__["_pending"]
        use_pending = pending is not None and self.ddp_kwargs.get("find_unused_parameters", False)
        inner = _WithPendingOutputs(self.module, pending) if use_pending else self.module
        for p in idle:
            p.requires_grad_(False)
        try:
            ddp = nn.parallel.DistributedDataParallel(inner, **self.ddp_kwargs)
        finally:
            for p in idle:
                p.requires_grad_(True)
        self.__dict__.update(_ddp=ddp, _use_pending=use_pending, _built_idle=self._idle_key(idle),
                             rebuilds=self.__dict__["rebuilds"] + 1)

    def _idle_key(self, idle: Optional[List[nn.Parameter]] = None) -> tuple:
        """What DDP was built for: the idle parameters, and the ones frozen (``requires_grad`` off) by a policy."""
        idle = self._idle_now() if idle is None else idle
        return frozenset(map(id, idle)), frozenset(id(p) for p in self.module.parameters() if not p.requires_grad)

    @property
    def ddp(self) -> nn.parallel.DistributedDataParallel:
        """The current DistributedDataParallel."""
        return self.__dict__["_ddp"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """DDP's forward (gradients are averaged over the ranks in backward); rebuilt first if the idle
        parameters changed since it was built."""
        if torch.is_grad_enabled() and self._idle_key() != self.__dict__["_built_idle"]:
            self.rebuild()
        output = self.ddp(*args, **kwargs)
        return output[0] if self.__dict__["_use_pending"] else output


def idle_parameters(model: nn.Module, scheduler: Any = None) -> List[nn.Parameter]:
    """Attachment parameters a training step does not use now: those no policy of ``scheduler`` trains at
    present (exit branches before, between and after their policies' epochs, the deciders of a learned policy,
    routing outside its epochs)."""
    return attachment_idle_parameters(model, scheduler.policies if scheduler is not None else [])


def wrap(model: nn.Module, scheduler: Any = None, **ddp_kwargs: Any) -> nn.Module:
    """``model`` in DDP when several processes run (the model itself otherwise); attach exits before.

    With a ``scheduler``, DDP follows the schedule: it leaves out exit branches while no policy trains them and
    is rebuilt when thinning replaces parameters. ``device_ids`` defaults to the model's GPU. With
    ``find_unused_parameters=True`` DDP also sees the exit logits the loss takes from the exits' hooks.
    """
    if not is_distributed():
        return model
    device = model_device(model)
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
    pending = scheduler.pending_outputs if scheduler is not None else None
    replicated = Replicated(model, lambda: idle_parameters(model, scheduler), pending, **ddp_kwargs)
    if scheduler is not None:
        scheduler.masks.listeners.append(_rebuilder(replicated))
    return replicated


def _rebuilder(replicated: Replicated) -> Callable[[], None]:
    """A listener that rebuilds ``replicated`` while it lives; no reference cycle keeps it (and its process
    group) alive past ``leave``."""
    ref = weakref.ref(replicated)

    def rebuild() -> None:
        target = ref()
        if target is not None:
            target.rebuild()
    return rebuild


# --------------------------------------------------------------------------- collectives
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in one collective per dtype."""
    if not is_distributed() or not tensors:
        return
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (plain Python values)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src)
    return box[0]


def sum_across(values: Sequence[float]) -> List[float]:
    """``values`` summed over every rank (the same list on each)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def share_attachments(model: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s state of every attachment on every rank: extra state (the exits' thresholds and criteria,
    routing and quantization switches), parameters and buffers (after a calibration, say)."""
    if not is_distributed():
        return
    for attachment in attachments(model):
        extra = [m for m in attachment.modules()
                 if type(m).get_extra_state is not nn.Module.get_extra_state]
        states = broadcast_object([m.get_extra_state() for m in extra], src)
        for module, state in zip(extra, states):
            module.set_extra_state(state)
        broadcast_tensors([t for t in (*attachment.parameters(), *attachment.buffers())], src)


#: the name this function had when only exits were shared
share_exits = share_attachments


def share_masks(masks: Mapping[str, Any], params: Mapping[str, torch.Tensor], versions: Dict[str, int],
                src: int = 0) -> List[str]:
    """Rank ``src``'s mask, and the weights it masks, on every rank for each mask that changed on any rank
    since ``versions`` (ParameterMasker.version by name, updated here); returns the names shared.

    One small all-reduce agrees on what changed; the changed masks and weights follow in one broadcast per dtype.
    """
    if not is_distributed():
        return []
    names = list(masks)
    changed = torch.tensor([masks[n].version != versions.get(n) for n in names], dtype=torch.uint8)
    if names:
        dist.all_reduce(changed, op=dist.ReduceOp.MAX)
    flagged = [n for n, c in zip(names, changed.tolist()) if c]
    if flagged:
        present = torch.tensor([masks[n].mask is not None for n in flagged], dtype=torch.uint8)
        dist.broadcast(present, src)
        tensors: List[torch.Tensor] = []
        for name, has in zip(flagged, present.tolist()):
            masker, param = masks[name], params[name]
            if not has:
                masker.mask = None
                continue
            mask = masker.mask
            if mask is None or mask.shape != param.shape:
                mask = torch.zeros_like(param)
            masker.mask = mask.to(param.device)
            tensors += [masker.mask, param.data]
        broadcast_tensors(tensors, src)
    for name in names:
        versions[name] = masks[name].version
    return flagged


def leave() -> None:
    """Leave the process group, if this process joined one (call once, at the end)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # DDP objects still holding the group would otherwise be destroyed after it
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if is_distributed():
        dist.barrier()
