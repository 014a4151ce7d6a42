"""The app's learned exit policy (``criterion: learned``): trained on the validation split after training,
reported on test, its accuracy-vs-MACs curve written next to the entropy threshold rule's.

The curve sweeps the trade-off around the schedule's value (``learned_policy.tradeoff``); the rule's curve is
the Pareto front of entropy thresholds on the same logits. Both are computed on the validation split, and each
point's test figures are written beside it in ``tradeoff.csv``. The deciders of the schedule's trade-off stay
in the model (and its checkpoint).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

from ..early_exit.calibrate import exit_costs, split_figures
from ..early_exit.criteria import criteria_list
from ..early_exit.exits import EarlyExits
from ..early_exit.learned_policy import policy_curve, policy_deciders, tradeoff_grid
from ..early_exit.stats import collect_exit_logits
from ..early_exit.tradeoff import measure_point, pareto_front
from ..errors import ConfigError
from ..modules import eval_mode, unwrap
from .tradeoff_files import write_tradeoff

log = logging.getLogger("distill_ee")

#: the fixed rule the learned policy is compared with
RULE = "entropy"


def run_learned_policy(exits: EarlyExits, valid_loader: Any, test_loader: Any, out_dir: str, *,
                       masks: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Train the exits' deciders for the schedule's trade-off on validation, measure test, write the curves;
    the ``learned_policy`` part of summary.json."""
    if valid_loader is None:
        raise ConfigError("a learned exit policy is trained on the validation split; set a validation size above 0")
    deciders = policy_deciders(exits)
    tradeoff = exits.spec.learned_policy.tradeoff  # type: ignore[union-attr]
    multi = exits.multi_exit_model()
    with eval_mode(multi):
        valid, valid_y = collect_exit_logits(multi, valid_loader)
        test, test_y = collect_exit_logits(multi, test_loader)
    costs = exit_costs(multi, unwrap(exits.model), masks)
    curve = policy_curve(deciders, valid, valid_y, costs, tradeoff_grid(tradeoff), test_logits=test,
                         test_targets=test_y)
    chosen = next(p for p in curve if p.tradeoff == tradeoff)
    for decider, state in zip(deciders, chosen.state):
        decider.load_state_dict(state)
    front = pareto_front(valid, valid_y, RULE, costs.macs_per_exit, costs.full_macs, branch_macs=costs.branch_macs)
    rule = criteria_list(RULE, len(deciders))
    front_test = [measure_point(test, test_y, rule, p.thresholds, costs) for p in front]
    final = measure_point(valid, valid_y, rule, [None] * len(deciders), costs)
    names = list(exits.output_names)
    files = write_tradeoff(front, chosen.valid, out_dir, final=final, exit_names=names, learned=curve,
                           front_test=front_test, rule=RULE)
    valid_final = final.top1
    test_final = measure_point(test, test_y, rule, [None] * len(deciders), costs).top1
    out = {"tradeoff": tradeoff, "rule": RULE, "valid": split_figures(chosen.valid, valid_final, names),
           "test": split_figures(chosen.test, test_final, names),  # type: ignore[arg-type]
           "curve": [p.to_dict() for p in curve], "files": files}
    for split in ("valid", "test"):
        fig = out[split]
        log.info("Learned exit policy (trade-off %g) on %-5s top1 %.2f (final exit %.2f), MACs %.1f%% of the "
                 "backbone, samples per exit: %s", tradeoff, split, fig["top1"], fig["final_top1"],
                 100 * fig["macs_fraction"], ", ".join(f"{k} {v:.1f}%" for k, v in fig["taken_pct"].items()))
    return {"learned_policy": out}

