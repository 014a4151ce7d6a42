"""Deployment on ONNX Runtime: a multi-exit model exported by ``--ee-export onnx``, run with real early exit.

Needs numpy and onnxruntime only (no torch, no training code)::

    from distill_ee.deploy import MultiExitSession
    session = MultiExitSession("run_dir/onnx")
    logits, exit_index = session(images)          # float32 (N, C, H, W) numpy array
"""
from .manifest import MANIFEST, Manifest, ManifestError, read_manifest
from .session import MultiExitSession

__all__ = ["MANIFEST", "Manifest", "ManifestError", "MultiExitSession", "read_manifest"]
