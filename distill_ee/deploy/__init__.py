"""Deployment on ONNX Runtime: a multi-exit model exported by ``--ee-export onnx``, run with real early exit.

Needs numpy and onnxruntime only (no torch, no training code)::

    from distill_ee.deploy import MultiExitSession
    session = MultiExitSession("run_dir/onnx")
    logits, exit_index = session(images)          # float32 (N, C, H, W) numpy array
"""
from typing import Any

from .manifest import MANIFEST, Manifest, ManifestError, read_manifest

__all__ = ["MANIFEST", "Manifest", "ManifestError", "MultiExitSession", "read_manifest"]


def __getattr__(name: str) -> Any:
    """``MultiExitSession`` on first use: it needs onnxruntime, which exporting (manifests) does not."""
    if name == "MultiExitSession":
        from .session import MultiExitSession

        return MultiExitSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
