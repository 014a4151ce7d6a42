"""Which modules of a model are residual blocks that routing may skip, and what each one costs.

A skippable block is a module whose forward adds its input (or a function of it) to a residual branch and
keeps the input's shape: skipping it passes the input on unchanged (the identity shortcut). A block whose
shortcut changes the shape (a downsampling block) cannot be skipped: naming one is an error, and a pattern
leaves it out. Patterns (``layer*.*``) match the outermost modules only (``layer1.0``, not
``layer1.0.conv1``).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.fx
from torch import nn

from ..arguments import ArgumentError
from ..dynamic import static_compute
from ..fx_trace import UntraceableError, trace_graph
from ..modules import eval_mode, example_input, expand_name, is_pattern, module_names, strip_module_prefix
from ..registry import suggest
from ..summaries import module_macs

_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass
class BlockCall:
    """What one call of a module looked like on the example input."""

    order: int
    calls: int
    same_shape: bool


def observe_blocks(model: nn.Module, example: torch.Tensor) -> Dict[str, BlockCall]:
    """For every module of ``model``: its first call's position, number of calls, and whether it kept the shape
    of its (first, tensor) input, on ``example`` in eval mode without routing."""
    names = {m: n for n, m in model.named_modules() if n}
    seen: Dict[str, BlockCall] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        same = bool(args) and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor) \
            and tuple(args[0].shape) == tuple(output.shape)
        if name in seen:
            seen[name].calls += 1
        else:
            seen[name] = BlockCall(len(seen), 1, same)

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with eval_mode(model), torch.no_grad(), static_compute(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def is_residual(block: nn.Module) -> bool:
    """True when the block's traced forward adds two values (a residual connection); also True when torch.fx
    cannot trace the block (its shape check is then the only one)."""
    try:
        graph = trace_graph(block)
    except UntraceableError:
        return True
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _ADDS:
            return True
        if node.op == "call_method" and node.target in ("add", "add_"):
            return True
        if node.op == "call_module" and "add" in type(block.get_submodule(str(node.target))).__name__.lower():
            return True
    return False


def resolve_blocks(model: nn.Module, names: Sequence[Any], example: torch.Tensor,
                   excluded: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(skippable blocks in execution order, blocks a pattern matched but left out because they change the
    shape) for the names and patterns of a schedule; ArgumentError (path ``(i,)``) for a bad entry."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not names:
        raise ArgumentError("must be a non-empty list of block names or patterns (e.g. ['layer*.*'])")
    candidates = [n for n in module_names(model) if not any(n == e or n.startswith(e + ".") for e in excluded)]
    calls = observe_blocks(model, example)
    chosen: List[str] = []
    left_out: List[str] = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"a block must be named by a string, got {name!r}", (i,))
        hits = _outermost(expand_name(name, candidates))
        if not hits:
            what = "pattern" if is_pattern(name) else "module"
            raise ArgumentError(f"{what} {name!r} matches no module of the model", (i,),
                                suggestions=suggest(strip_module_prefix(name), candidates))
        for hit in hits:
            problem = _why_not_skippable(model, hit, calls)
            if problem and is_pattern(name):
                left_out.append(hit)
            elif problem:
                raise ArgumentError(f"block {hit!r} cannot be skipped: {problem}", (i,))
            elif hit not in chosen:
                chosen.append(hit)
        if is_pattern(name) and not any(h in chosen for h in hits):
            raise ArgumentError(f"pattern {name!r} matches no block that can be skipped (it matched "
                                f"{', '.join(hits[:6])}{' ...' if len(hits) > 6 else ''})", (i,))
    nested = [(a, b) for a in chosen for b in chosen if b.startswith(a + ".")]
    if nested:
        raise ArgumentError(f"block {nested[0][1]!r} is inside block {nested[0][0]!r}: name one of them")
    chosen.sort(key=lambda n: calls[n].order)
    return chosen, left_out


def _outermost(names: List[str]) -> List[str]:
    """Drop every name inside another of the list."""
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _why_not_skippable(model: nn.Module, name: str, calls: Dict[str, BlockCall]) -> str:
    """Why block ``name`` cannot be skipped ('' when it can)."""
    call = calls.get(name)
    block = model.get_submodule(name)
    if call is None:
        return "it does not run in the model's forward pass"
    if call.calls != 1:
        return f"it runs {call.calls} times in one forward pass"
    if not call.same_shape:
        return "its output's shape differs from its input's (a downsampling shortcut); only blocks whose " \
               "shortcut is the identity can be skipped"
    if not any(True for _ in block.parameters()):
        return "it has no parameters (not a residual block)"
    if not is_residual(block):
        return "its forward adds nothing to its input (not a residual block)"
    return ""


@dataclass
class BlockFacts:
    """What a routing set is built from: the blocks, their MACs, the backbone's, and each block's input."""

    blocks: List[str]
    block_macs: List[int]
    backbone_macs: int
    channels: List[int]
    input_shape: List[int]


def block_facts(model: nn.Module, blocks: List[str], input_shape: List[int]) -> BlockFacts:
    """Measure the blocks of ``model`` on an example input of ``input_shape``."""
    x = example_input(model, input_shape, batch=2)
    macs, total = block_costs(model, blocks, x)
    channels: Dict[str, int] = {}
    handles = [model.get_submodule(b).register_forward_pre_hook(
        lambda m, args, b=b: channels.__setitem__(b, int(args[0].shape[1]))) for b in blocks]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return BlockFacts(list(blocks), macs, total, [channels[b] for b in blocks], list(input_shape))


def block_costs(model: nn.Module, blocks: Sequence[str], example: torch.Tensor) -> Tuple[List[int], int]:
    """(dense MACs per sample of each block, of the whole model) on ``example``, every block running."""
    with static_compute(model):
        records = module_macs(model, example[:1])
    total = sum(r.dense_macs for r in records)
    per_block = [sum(r.dense_macs for r in records if r.name.startswith(b + ".")) for b in blocks]
    return per_block, total
