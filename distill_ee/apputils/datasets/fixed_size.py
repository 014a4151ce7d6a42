"""Dataset sources whose images all have one fixed size and are held in memory: description, checks, splits."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from torch import Tensor

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource, check_valid_size
from distill_ee.apputils.datasets.in_memory import InMemoryImages
from distill_ee.apputils.datasets.splits import stratified_split
from distill_ee.errors import ConfigError, DataError

Images = Tuple[Tensor, Tensor]


def check_fixed_size(name: str, image_size: Optional[int], native: int) -> None:
    """Reject an ``image_size`` for datasets whose images have one fixed size."""
    if image_size is not None and image_size != native:
        raise ConfigError(
            f"dataset {name!r} has {native}x{native} images; image_size applies to imagefolder/imagenet only"
        )


class FixedSizeSource(DatasetSource):
    """``num_classes`` classes of ``input_shape`` (C, H, W) images; subclasses ``read`` them.

    ``layout`` spells out the data directory a dataset needs, given its path; None when it needs none.
    """

    num_classes: int
    input_shape: Tuple[int, int, int]
    layout: Optional[Callable[[str], str]] = None

    def info(self, data_dir: Optional[str] = None, image_size: Optional[int] = None) -> DatasetInfo:
        """The fixed number of classes and image shape."""
        return DatasetInfo(self.name, self.num_classes, self.input_shape)

    def load(
        self, data_dir: Optional[str], *, valid_size: float, split_seed: int, image_size: Optional[int]
    ) -> DataSplits:
        """Check the arguments and that a needed ``data_dir`` is given, then ``read`` the splits."""
        check_valid_size(valid_size)
        check_fixed_size(self.name, image_size, self.input_shape[-1])
        if data_dir is None and self.needs_directory():
            raise DataError(f"dataset {self.name!r} needs a data directory; {self.layout('DIR')}")
        return self.read(data_dir, valid_size=valid_size, split_seed=split_seed)

    def needs_directory(self) -> bool:
        """Whether ``load`` needs a ``data_dir`` (the datasets with a ``layout`` do, unless they override this)."""
        return self.layout is not None

    def read(self, data_dir: Optional[str], *, valid_size: float, split_seed: int) -> DataSplits:
        """Read the data and split it; raises DataError when ``data_dir`` is malformed."""
        raise NotImplementedError

    def held_out(
        self, train: Images, test: Images, *, valid_size: float, split_seed: int,
        augment: Optional[Callable[[Tensor], Tensor]] = None, **norm: Any
    ) -> DataSplits:
        """``valid_size`` of the ``train`` images held out stratified for validation (not augmented), and ``test``."""
        images, labels = train
        kept, valid = stratified_split(labels.numpy(), valid_size, split_seed)
        return DataSplits(
            train=InMemoryImages.select(images, labels, kept, augment=augment, **norm),
            valid=InMemoryImages.select(images, labels, valid, **norm) if valid_size > 0 else None,
            test=InMemoryImages(*test, **norm),
            info=self.info(),
        )
