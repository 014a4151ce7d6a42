"""Rows of ``benchmarks/dynamic_inference.py`` for one family of methods each, computed from a trained checkpoint.

Every family's module offers a function returning ``[(method, figures), ...]``; ``figures`` is a JSON-able dict:

* ``top1``: test top-1 (%) on the whole test split; ``test_images``: how many images that is;
* ``macs_pct``: expected MACs per sample, % of the backbone named in the row's ``backbone`` column;
* ``speed`` (only when timing): ``{"1": s1, "256": s256}``, each with ``backbone``, ``real`` and ``oracle`` in
  seconds per sample and ``spread`` (how much slower than its best the median round was), timed in interleaved
  rounds, best round each (``distill_ee.apputils.timing.compare_speed`` returns this shape);
* ``note``: a short text for the table's notes column (optional); anything else is kept in the cache only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

#: the validation split every training held out: 500 of each class of Fashion-MNIST's 60,000 training images
VALID_IMAGES, TRAIN_IMAGES = 5_000, 60_000
VALID_SIZE = VALID_IMAGES / TRAIN_IMAGES
#: (batch size, test images timed, interleaved rounds) of every speed column
SPEED_RUNS = ((256, 2_560, 5), (1, 200, 3))


def load_splits(data: Optional[str], dataset: str = "fashion_mnist") -> Any:
    """The splits the trainings used (the same validation share, the same seed)."""
    from distill_ee.apputils.datasets import load_dataset

    return load_dataset(dataset, data, valid_size=VALID_SIZE)


def load_model(arch: str, checkpoint: Path, info: Any) -> Any:
    """A trained model from its checkpoint (attachments and thinning replayed), in eval mode."""
    import distill_ee
    from distill_ee.apputils.models import create_model

    model = create_model(arch, info.num_classes, info.input_shape[0])
    distill_ee.load_checkpoint(model, checkpoint)
    return model.eval()
