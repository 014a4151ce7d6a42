"""Post-training int8 quantization of an ONNX multi-exit export, run with real integer kernels on ONNX Runtime.

Every stage, branch, fused exit and the backbone is quantized statically in ONNX Runtime's QDQ format
(``onnxruntime.quantization``): weights int8 (per output channel by default), activations uint8 or int8 with
ranges calibrated on sample inputs (min/max); the network's operators are quantized, the criteria's softmax
and entropy stay in float. Each file is calibrated on the values it really receives:
the calibration images are run through the float stages and every file gets its own inputs. The result is a
directory ``MultiExitSession`` runs as it is (the manifest records how it was quantized, and its ``files``
records are recomputed for the int8 files); ``thresholds`` may choose the int8 files' own thresholds from a
session on them before the manifest is written, once. Nothing here imports torch.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .manifest import MANIFEST, add_records, check_manifest

if TYPE_CHECKING:
    from .session import MultiExitSession

#: the operators quantized: the network's own (convolutions, matrix products, pooling, activations, residual sums
#: and reshaping); not Softmax, LogSoftmax, Mul, ReduceSum, ArgMax or Sigmoid, which only the exits' scores
#: use, so that the decisions are computed in float
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Add",
                 "Concat", "Flatten", "Reshape", "Resize", "Transpose", "Squeeze", "Unsqueeze")


class _Reader:
    """ONNX Runtime's calibration data reader over a list of feeds."""

    def __init__(self, feeds: List[Dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        """The next feed (None when done)."""
        return next(self._feeds, None)

    def rewind(self) -> None:
        """Not needed: each file is calibrated once."""


def calibration_feeds(session: MultiExitSession, images: np.ndarray, batch_size: int = 64
                      ) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """For every file of the export, the inputs it receives when ``images`` run through the float model."""
    plan = session.plan
    feeds: Dict[str, List[Dict[str, np.ndarray]]] = {}

    def add(name: str, feed: Dict[str, np.ndarray]) -> None:
        feeds.setdefault(name, []).append(feed)

    for i in range(0, images.shape[0], batch_size):
        x = np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
        env: List[Any] = [None] * plan["num_slots"]
        env[0] = x
        add(session.manifest.backbone.name if session.manifest.backbone else "", {"input": x})
        for k in range(len(session.stages)):
            stage_feed = {f"slot{s}": env[s] for s in plan["inputs"][k]}
            add(session.manifest.stages[k].name, stage_feed)
            if k < session.manifest.num_exits:
                add(session.manifest.exits[k].name, stage_feed)
            session.run_stage(k, env)
            if k < session.manifest.num_exits:
                add(session.manifest.branches[k].name, {"features": env[plan["attach"][k]]})
    return feeds


def quantize_export(source: Union[str, Path], target: Union[str, Path], images: np.ndarray, *,
                    per_channel: bool = True, activations: str = "uint8", symmetric_activations: bool = False,
                    exclude: Sequence[str] = (),
                    thresholds: Optional[Callable[[MultiExitSession], Sequence[Optional[float]]]] = None
                    ) -> List[Path]:
    """Quantize every file of the export in ``source`` into ``target`` (calibrated on ``images``); the written
    paths. ``activations``: ``uint8`` or ``int8``; ``exclude``: file names left in float; ``thresholds``: given a
    session on the quantized files, the thresholds their manifest gets (the float export's otherwise)."""
    from .session import MultiExitSession  # needs onnxruntime (the deploy extra), as quantizing does

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations are uint8 or int8, got {activations!r}")
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    session = MultiExitSession(source, threads=1)
    feeds = calibration_feeds(session, images)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, file_feeds in feeds.items():
            if not name:
                continue
            out = target / name
            if name in exclude:
                shutil.copyfile(source / name, out)
            else:
                pre = Path(tmp) / name
                quant_pre_process(str(source / name), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(out), _Reader(file_feeds), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, op_types_to_quantize=list(QUANTIZED_OPS),
                                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                                # 7-bit weights: x86 CPUs without VNNI multiply uint8 by int8 into
                                # saturating int16 pairs, which 8-bit weights overflow (ONNX Runtime's advice)
                                weight_type=QuantType.QInt8, reduce_range=True,
                                extra_options={"ActivationSymmetric": symmetric_activations,
                                               "WeightSymmetric": True})
            written.append(out)
    raw = session.manifest.to_json()
    raw["quantization"] = {"format": "QDQ", "weights": "int8", "weight_range_bits": 7,
                           "activations": activations,
                           "per_channel": per_channel, "symmetric_activations": symmetric_activations,
                           "calibration_images": int(images.shape[0]), "operators": list(QUANTIZED_OPS),
                           "float": sorted(exclude)}
    # the files changed: their records are recomputed, and the result must be a runnable export
    manifest = check_manifest(add_records(raw, target), target, str(target / MANIFEST))
    if thresholds is not None:
        manifest.set_thresholds(thresholds(MultiExitSession(manifest, threads=1)))
    written.append(manifest.write())
    return written
