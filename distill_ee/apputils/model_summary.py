"""Distiller's ``--summary modules``, ``png`` and ``png_w_params``: the leaf modules, and the model's graph drawn.

The graph is the model's torch.fx trace drawn with matplotlib (no graphviz program needed): one box per module
call, function and method, in rows by depth from the input, arrows from each value to its users. With
``png_w_params`` each module's box also lists its parameters' shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import fx, nn

from ..errors import ConfigError
from ..fx_trace import UntraceableError, trace_graph
from ..summaries import params_nnz
from ..atomic import atomic_path

#: a graph with more nodes than this is not drawn (the picture would be unreadable and huge)
MAX_NODES = 2000


def modules_table(model: nn.Module) -> str:
    """Distiller's ``modules`` summary: every leaf module's qualified name and type, and its parameter count."""
    rows = [(name, type(module).__name__, sum(p.numel() for p in module.parameters(recurse=False)))
            for name, module in model.named_modules() if name and not any(True for _ in module.children())]
    width = max([len("Name")] + [len(r[0]) for r in rows])
    kind = max([len("Type")] + [len(r[1]) for r in rows])
    lines = [f"{'Name':<{width}}  {'Type':<{kind}}  Params", f"{'-' * width}  {'-' * kind}  ------"]
    lines += [f"{n:<{width}}  {t:<{kind}}  {p:,}" for n, t, p in rows]
    lines.append(f"{len(rows)} leaf modules, {params_nnz(model)[0]:,} parameters")
    return "\n".join(lines)


def _trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model``; ConfigError (one line) when fx cannot trace it."""
    try:
        with torch.no_grad():
            return trace_graph(model)
    except UntraceableError as err:
        raise ConfigError(f"--summary png: torch.fx cannot trace {err.model} ({err.reason}{err.where}), so no "
                          "graph is drawn; --summary model lists its modules") from None


def _label(node: fx.Node, modules: Dict[str, nn.Module], with_params: bool) -> str:
    """A node's box text: the module's name and type (and parameter shapes), or the function's name."""
    if node.op == "placeholder":
        return f"input: {node.target}"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        module = modules.get(str(node.target))
        text = f"{node.target}\n{type(module).__name__}"
        if with_params and module is not None:
            text += "".join(f"\n{n} {'x'.join(map(str, p.shape))}" for n, p in module.named_parameters(recurse=False))
        return text
    if node.op == "get_attr":
        return f"{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _layout(nodes: List[fx.Node]) -> Dict[fx.Node, Tuple[float, float]]:
    """(column, row) of every node: the row its longest path from an input, the column its place in that row."""
    depth: Dict[fx.Node, int] = {}
    for node in nodes:  # fx keeps the nodes in topological order
        depth[node] = max((depth[i] + 1 for i in node.all_input_nodes if i in depth), default=0)
    rows: Dict[int, List[fx.Node]] = {}
    for node in nodes:
        rows.setdefault(depth[node], []).append(node)
    widest = max(len(r) for r in rows.values())
    return {node: (i - (len(row) - 1) / 2 + (widest - 1) / 2, float(d))
            for d, row in rows.items() for i, node in enumerate(row)}


def draw_model_png(model: nn.Module, path: Path, with_params: bool = False) -> Path:
    """Draw ``model``'s fx graph to the PNG file ``path``; ConfigError (one line) when fx cannot trace it,
    matplotlib is not installed or the graph is too large to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise ConfigError("--summary png needs matplotlib to draw the graph (pip install matplotlib); "
                          "--summary model lists the modules without it") from None
    graph = _trace(model)
    nodes = list(graph.nodes)
    if len(nodes) > MAX_NODES:
        raise ConfigError(f"--summary png: the graph has {len(nodes):,} nodes, more than {MAX_NODES:,} can be drawn "
                          "readably; --summary modules lists the layers")
    modules = dict(model.named_modules())
    where = _layout(nodes)
    columns = max(x for x, _ in where.values()) + 1
    rows = max(y for _, y in where.values()) + 1
    box_h = 1.4 if with_params else 0.9
    fig = plt.figure(figsize=(min(2.6 * columns + 1, 200), min(box_h * rows + 1, 300)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.7, columns - 0.3)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.axis("off")
    for node in nodes:
        x, y = where[node]
        for source in node.all_input_nodes:
            sx, sy = where[source]
            ax.annotate("", xy=(x, y - 0.25), xytext=(sx, sy + 0.25),
                        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})
    for node in nodes:
        x, y = where[node]
        color = "#cfe2f3" if node.op == "call_module" else "#eeeeee"
        ax.text(x, y, _label(node, modules, with_params), ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "0.3"})
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=80)
    plt.close(fig)
    return path
