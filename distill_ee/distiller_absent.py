"""Distiller features that are not implemented here, and what to use instead (listed in docs/distiller.md).

A schedule, a command line or an architecture name taken from Distiller that names one of them is refused as any
unknown name is, and the message says plainly that the feature is not implemented here, what to use instead,
and where the migration page is: ``absence_note("pruner", "GradientRankedFilterPruner_AGP")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

#: the migration page every such message points to
PAGE = "docs/distiller.md"


@dataclass(frozen=True)
class Absence:
    """What a Distiller name is, and what does its job here (empty when nothing does)."""

    what: str
    instead: str = ""


_RANKED = "L1RankedStructureParameterPruner_AGP (weight-magnitude ranking) or ActivationAPoZRankedFilterPruner_AGP"
_AMC_TEXT = "AMC, Distiller's reinforcement-learning search of per-layer pruning ratios"
_AMC_INSTEAD = "a sensitivity analysis (--sense) and a schedule with the ratios it suggests"
_AMC = Absence(_AMC_TEXT, _AMC_INSTEAD)
_AMC_SECTION = Absence(f"a section of the schedules of {_AMC_TEXT}", _AMC_INSTEAD)

#: (kind, name) -> Absence; ``kind`` is a registry's kind ("pruner", "architecture", "schedule section", ...)
ABSENT: Dict[Tuple[str, str], Absence] = {
    ("pruner", "GradientRankedFilterPruner"): Absence("Distiller's gradient-ranked filter pruner", _RANKED),
    ("pruner", "GradientRankedFilterPruner_AGP"): Absence("Distiller's gradient-ranked filter pruner", _RANKED),
    ("pruner", "RandomRankedFilterPruner"): Absence("Distiller's random filter ranking",
                                                    "BernoulliFilterPruner_AGP or RandomLevelStructureParameterPruner"),
    ("pruner", "RandomRankedFilterPruner_AGP"): Absence("Distiller's random filter ranking",
                                                        "BernoulliFilterPruner_AGP"),
    ("pruner", "FMReconstructionChannelPruner"): Absence(
        "Distiller's feature-map reconstruction channel pruner (He et al. 2017)",
        "L1RankedStructureParameterPruner_AGP with group_type Channels, then a ChannelRemover"),
    ("pruner", "BaiduRNNPruner"): Absence("Distiller's RNN pruner (Narang et al.); recurrent models are not "
                                          "supported here", "AutomatedGradualPruner"),
    ("regularizer", "DropFilterRegularizer"): Absence("Distiller's DropFilter regularizer",
                                                      "BernoulliFilterPruner_AGP (random filter dropping)"),
    ("quantizer", "WRPNQuantizer"): Absence("Distiller's WRPN quantizer (wide reduced-precision networks)",
                                            "DorefaQuantizer or QuantAwareTrainRangeLinearQuantizer"),
    ("quantizer", "NCFQuantAwareTrainQuantizer"): Absence("Distiller's NCF recommender quantizer",
                                                          "QuantAwareTrainRangeLinearQuantizer"),
    ("schedule section", "network"): _AMC_SECTION,
    ("schedule section", "rl_lib"): _AMC_SECTION,
    ("architecture", "resnext101_32x4d"): Absence("the Cadene pretrainedmodels' ResNeXt Distiller's example uses",
                                                 "torchvision's resnext101_32x8d or resnext50_32x4d"),
    ("option", "--amc"): _AMC,
    ("option", "--greedy"): Absence("Distiller's greedy filter-pruning search",
                                    "a sensitivity analysis (--sense) and a filter-pruning schedule"),
    ("option", "--qe-convert-pytorch"): Absence(
        "Distiller's conversion of a quantized model to PyTorch's own quantized modules (fbgemm/qnnpack)",
        "--quantize-eval with --ee-export onnx, a real int8 ONNX Runtime model"),
    ("option", "--qe-lapq"): Absence("LAPQ, Distiller's loss-aware post-training quantization search",
                                     "post-training quantization with --qe-clip-acts (avg, n_std, gauss, laplace)"),
}


def absence_note(kind: str, name: str) -> Optional[str]:
    """``"'X' is Distiller's ...: not implemented here (...); use ..."``, or None when ``name`` is not absent."""
    found = ABSENT.get((kind, str(name)))
    if found is None:
        return None
    instead = f"; use {found.instead}" if found.instead else ""
    return f"{name!r} is {found.what}: not implemented here (see {PAGE}){instead}"
