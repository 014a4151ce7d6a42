"""ImageNet and any ImageFolder tree: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg."""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource, check_valid_size
from distill_ee.apputils.datasets.splits import stratified_split
from distill_ee.errors import ConfigError, DataError
from distill_ee.apputils.datasets.registry import DATASETS

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

# torchvision is imported inside the functions below: importing it takes seconds; only these datasets use it.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


def train_transform(size: int) -> Callable:
    """Random resized crop to ``size``, random horizontal flip, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(size: int) -> Callable:
    """Resize to 256/224 of ``size`` (256 for 224), center crop to ``size``, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def class_folders(folder: str) -> List[str]:
    """Sorted names of the sub-folders of ``folder`` (ImageFolder's class order)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def subset(folder: ImageFolder, indices: Sequence[int], transform: Callable) -> ImageFolder:
    """A copy of ``folder`` restricted to ``indices`` and using ``transform``, without rescanning the disk."""
    from torchvision.datasets.vision import StandardTransform

    part = copy.copy(folder)
    part.samples = [folder.samples[i] for i in indices]
    part.imgs = part.samples
    part.targets = [target for _, target in part.samples]
    part.transform = transform
    part.transforms = StandardTransform(transform, folder.target_transform)
    return part


@DATASETS.register("imagefolder")
class ImageFolderSource(DatasetSource):
    """Any ImageFolder tree; validation carved out of train/, test is val/; images resized to ``image_size``."""

    name = "imagefolder"
    default_num_classes: Optional[int] = None

    def expected_layout(self, data_dir: str) -> str:
        """The accepted layout, spelled out with ``data_dir``."""
        train = os.path.join(data_dir, "train", "<class>", "*.jpg")
        val = os.path.join(data_dir, "val", "<class>", "*.jpg")
        return f"expected {train} and {val} (one sub-folder per class, the same classes in both)"

    def info(self, data_dir: Optional[str] = None, image_size: Optional[int] = None) -> DatasetInfo:
        """Classes counted from ``data_dir/train`` (ImageNet: 1000 without a directory), 3 x size x size."""
        size = self.image_size(image_size)
        if data_dir is not None:
            return DatasetInfo(self.name, len(self.class_names(data_dir)), (3, size, size))
        if self.default_num_classes is None:
            raise DataError(
                f"dataset {self.name!r} takes its classes from the data directory; "
                f"pass it ({self.expected_layout('DIR')})"
            )
        return DatasetInfo(self.name, self.default_num_classes, (3, size, size))

    def image_size(self, image_size: Optional[int]) -> int:
        """``image_size`` or the default 224; rejects sizes below 1."""
        if image_size is None:
            return DEFAULT_IMAGE_SIZE
        if image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
        return image_size

    def class_names(self, data_dir: Optional[str]) -> List[str]:
        """Class folder names shared by ``train/`` and ``val/``; raises DataError on any other layout."""
        if data_dir is None:
            raise DataError(f"dataset {self.name!r} needs a data directory; {self.expected_layout('DIR')}")
        for part in ("train", "val"):
            if not os.path.isdir(os.path.join(data_dir, part)):
                raise DataError(
                    f"dataset {self.name!r}: no such directory: {os.path.join(data_dir, part)}; "
                    f"{self.expected_layout(data_dir)}"
                )
        train, val = class_folders(os.path.join(data_dir, "train")), class_folders(os.path.join(data_dir, "val"))
        if not train:
            raise DataError(f"dataset {self.name!r}: no class folders in train/; {self.expected_layout(data_dir)}")
        if train != val:
            raise DataError(
                f"dataset {self.name!r}: train/ and val/ must have the same class folders "
                f"(only in train: {sorted(set(train) - set(val))}, only in val: {sorted(set(val) - set(train))})"
            )
        return train

    def load(
        self, data_dir: Optional[str], *, valid_size: float, split_seed: int, image_size: Optional[int]
    ) -> DataSplits:
        """Scan train/ and val/; hold out ``valid_size`` of train (with evaluation transforms) for validation."""
        check_valid_size(valid_size)
        size = self.image_size(image_size)
        classes = self.class_names(data_dir)
        train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
        full, test = self.scan(train_dir, data_dir), self.scan(val_dir, data_dir)
        train, valid = stratified_split(full.targets, valid_size, split_seed)
        return DataSplits(
            train=subset(full, train.tolist(), train_transform(size)),
            valid=subset(full, valid.tolist(), eval_transform(size)) if valid_size > 0 else None,
            test=subset(test, range(len(test)), eval_transform(size)),
            info=DatasetInfo(self.name, len(classes), (3, size, size)),
        )

    def scan(self, folder: str, data_dir: str) -> ImageFolder:
        """The ImageFolder of ``folder``; a class folder without images is a DataError."""
        from torchvision.datasets import ImageFolder

        try:
            return ImageFolder(folder)
        except FileNotFoundError as exc:
            raise DataError(f"dataset {self.name!r}: {exc}; {self.expected_layout(data_dir)}") from None


@DATASETS.register("imagenet")
class ImageNet(ImageFolderSource):
    """ImageNet (ILSVRC 2012) as an ImageFolder tree with val/ sorted into class folders; 224x224 crops."""

    name = "imagenet"
    default_num_classes = 1000
