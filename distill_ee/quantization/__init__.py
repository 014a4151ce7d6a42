"""Quantization: range-based linear quantization math (Distiller's modes) and activation statistics."""
from .linear import (ClipMode, LinearQuantMode, dequantize, fake_quantize, integer_range, quant_params, quantize,
                     stats_range, weight_range)
from .stats import collect_stats, load_stats, save_stats

__all__ = ["ClipMode", "LinearQuantMode", "collect_stats", "dequantize", "fake_quantize", "integer_range",
           "load_stats", "quant_params", "quantize", "save_stats", "stats_range", "weight_range"]
