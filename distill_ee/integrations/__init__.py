"""Integrations of distill_ee with training frameworks; each submodule imports its framework, this package does not.

``distill_ee.integrations.lightning``: ``CompressionCallback`` drives a schedule from ``lightning.pytorch``'s
``Trainer.fit`` (``pip install distill-ee[lightning]``; see docs/lightning.md).
"""
