"""Quantization: Distiller's quantizers (post-training linear, quantization-aware training with EMA ranges,
DoReFa, PACT) over a simulated quantization set attached to the model, the range-based linear quantization math
(Distiller's modes) and activation statistics."""
from .linear import (ClipMode, LinearQuantMode, dequantize, fake_quantize, integer_range, quant_params, quantize,
                     stats_range, tensor_range, weight_range)
from .post_train import DorefaQuantizer, PACTQuantizer, PostTrainLinearQuantizer, QuantAwareTrainRangeLinearQuantizer
from .quantset import LayerSettings, QuantizationSet, quantization_of
from .stats import collect_stats, load_stats, save_stats

__all__ = ["ClipMode", "DorefaQuantizer", "LayerSettings", "LinearQuantMode", "PACTQuantizer",
           "PostTrainLinearQuantizer", "QuantAwareTrainRangeLinearQuantizer", "QuantizationSet", "collect_stats",
           "dequantize", "fake_quantize", "integer_range", "load_stats", "quant_params", "quantization_of",
           "quantize", "save_stats", "stats_range", "tensor_range", "weight_range"]
