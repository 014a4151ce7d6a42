"""The sample app's report on routing (SkipNet/BlockDrop): execution rates, expected MACs, measured speed."""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch
from tabulate import tabulate
from torch import nn

from ..routing import Routing
from ..routing.stats import measure_routing_speed, routing_statistics

log = logging.getLogger("distill_ee")

#: a median round this much slower than the best makes a timing untrustworthy (a busy machine)
BUSY_SPREAD = 0.15


def routing_report(model: nn.Module, routing: Routing, test_loader: Any, device: torch.device,
                   timing: bool, batch_sizes: tuple = (256, 1), max_single: int = 300) -> Dict[str, Any]:
    """Per-block execution rates and expected MACs on the test split (logged as a table) and, when ``timing``,
    routed inference against the backbone at each batch size with the oracle bound."""
    stats = routing_statistics(model, test_loader)
    out: Dict[str, Any] = {"name": routing.name, "class": routing.kind, **stats}
    log.info("Routing %r (%s) on the test split: top1 %.2f, %.1f%% of the routed blocks' MACs executed, "
             "expected %.0f MACs per sample (%.1f%% of the backbone's %d)\n%s", routing.name, routing.kind,
             stats["top1"], stats["block_macs_executed_pct"], stats["macs_expected"], stats["macs_pct"],
             stats["macs_backbone"], tabulate([[b["name"], b["macs"], f"{b['share_pct']:.2f}",
                                                 f"{b['executed_pct']:.2f}"] for b in stats["blocks"]],
                                                headers=["block", "MACs", "share of backbone %", "executed %"],
                                                tablefmt="psql"))
    if not timing:
        return out
    inputs = torch.cat([x for x, _ in test_loader]).to(device)
    speed: Dict[str, Any] = {}
    for bs in batch_sizes:
        data = inputs[:max_single] if bs == 1 else inputs
        r = measure_routing_speed(model, data, bs)
        speed[str(bs)] = {k: r[k] for k in ("samples", "backbone", "routed", "oracle", "decisions", "speedup",
                                            "real_vs_oracle", "spread")}
        speed[str(bs)]["busy"] = r["spread"] > BUSY_SPREAD
        if "strategies" in r:
            speed[str(bs)]["strategies"] = r["strategies"]
    out["timing"] = speed
    log.info("Wall-clock speedup of routing over the backbone: %s",
             ", ".join(f"batch {b}: {v['speedup']:.2f}x ({v['real_vs_oracle']:.2f} of the oracle bound)"
                       for b, v in speed.items()))
    return out
