"""What a dataset source provides: its description and its train / validation / test splits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from torch.utils.data import Dataset

from distill_ee.errors import ConfigError


@dataclass
class DatasetInfo:
    """Number of classes and the shape (C, H, W) of one input image."""

    name: str
    num_classes: int
    input_shape: Tuple[int, int, int]


@dataclass
class DataSplits:
    """The train, validation (None when not requested) and test parts of a dataset."""

    train: Dataset
    valid: Optional[Dataset]
    test: Dataset
    info: DatasetInfo


class DatasetSource:
    """One loadable dataset; subclasses are registered in ``distill_ee.registry.DATASETS``."""

    name: str = ""
    #: read from image files, so ``load`` takes ``bad_images`` and ``image_check`` (see image_check)
    image_files: ClassVar[bool] = False

    def info(self, data_dir: Optional[str] = None, image_size: Optional[int] = None) -> DatasetInfo:
        """The dataset's description, without loading its images."""
        raise NotImplementedError

    def load(
        self, data_dir: Optional[str], *, valid_size: float, split_seed: int, image_size: Optional[int]
    ) -> DataSplits:
        """Read the data and split it; raises DataError when ``data_dir`` is missing or malformed."""
        raise NotImplementedError


def check_valid_size(valid_size: float) -> None:
    """Reject a validation share outside [0, 1)."""
    if not 0.0 <= valid_size < 1.0:
        raise ConfigError(f"valid_size must be in [0, 1), got {valid_size}")
