"""ImageNet and any ImageFolder tree: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource, check_valid_size
from distill_ee.apputils.datasets.image_check import CHECKS, DEFAULT_MAX_PIXELS, BadFile, check_images, find_images
from distill_ee.apputils.datasets.splits import stratified_split
from distill_ee.errors import ConfigError, DataError
from distill_ee.apputils.datasets.registry import DATASETS

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

# torchvision is imported inside the functions below: importing it takes seconds; only these datasets use it.

log = logging.getLogger(__name__)

#: what happens to an image file that fails the check: the load stops (DataError) or the file is left out
BAD_IMAGES = ("stop", "skip")
#: the check of this many image files or more is announced in the log (it takes seconds)
ANNOUNCED_CHECK = 10_000

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


def image_folder_of(root: str, samples: List[Tuple[str, int]]) -> ImageFolder:
    """torchvision's ImageFolder of ``root`` holding ``samples``, without its own walk of the disk (which follows
    symlink loops)."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder.__new__(ImageFolder)
    folder.make_dataset = lambda *args, **kwargs: samples  # shadows the walk for __init__ only
    ImageFolder.__init__(folder, root)
    del folder.make_dataset
    return folder


@dataclass
class ImagePart:
    """The image files of train/ or val/ as (path, class index), and the files and folders left out."""

    samples: List[Tuple[str, int]]
    bad_files: List[BadFile]
    bad_folders: List[BadFile]

    @property
    def count(self) -> int:
        """How many image files were found."""
        return len(self.samples) + len(self.bad_files)


def find_part(folder: str, classes: List[str]) -> ImagePart:
    """Every image file of each class folder of ``folder``, and the folders that could not be walked."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    part = ImagePart([], [], [])
    for index, name in enumerate(classes):
        tree = find_images(os.path.join(folder, name), IMG_EXTENSIONS)
        part.samples.extend((path, index) for path in tree.files)
        part.bad_folders.extend(tree.bad_folders)
    return part


def check_part(part: ImagePart, check: str, max_pixels: int) -> ImagePart:
    """``part`` without its image files that fail ``check`` (header or decode): those are its bad files."""
    good, bad = check_images([path for path, _ in part.samples], check, max_pixels)
    passed = set(good)
    return ImagePart([sample for sample in part.samples if sample[0] in passed], bad, part.bad_folders)


def settle_bad_images(name: str, parts: Sequence[ImagePart], bad_images: str) -> None:
    """``stop``: a DataError naming the first bad folder or image file; ``skip``: log what was left out."""
    folders = [bad for part in parts for bad in part.bad_folders]
    files = [bad for part in parts for bad in part.bad_files]
    bad = folders + files
    if bad and bad_images == "stop":
        more = f"and {len(bad) - 1} more; " if len(bad) > 1 else ""
        raise DataError(f"{bad[0]} ({more}--bad-images skip leaves {'them' if more else 'it'} out)")
    if folders:
        log.warning("dataset %r: left out %d folder%s (first: %s)", name, len(folders), _plural(folders), folders[0])
    if files:
        total = sum(part.count for part in parts)
        log.warning("dataset %r: left out %d unreadable image%s of %s (first: %s)", name, len(files), _plural(files),
                    f"{total:,}", files[0])


def _plural(items: Sequence) -> str:
    return "" if len(items) == 1 else "s"


@DATASETS.register("imagefolder")
class ImageFolderSource(DatasetSource):
    """Any ImageFolder tree; validation carved out of train/, test is val/; images resized to ``image_size``."""

    image_files = True

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
        self,
        data_dir: Optional[str],
        *,
        valid_size: float,
        split_seed: int,
        image_size: Optional[int],
        bad_images: str = "stop",
        image_check: str = "header",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> DataSplits:
        """Scan train/ and val/ and check every image file; hold out ``valid_size`` of train (with evaluation
        transforms) for validation.

        ``image_check`` is ``header`` or ``decode`` (see image_check); a file that fails it, or one with more than
        ``max_pixels`` pixels, stops the load (``bad_images="stop"``: a DataError) or is left out (``"skip"``).
        """
        check_valid_size(valid_size)
        for option, value, valid in (("bad_images", bad_images, BAD_IMAGES), ("image_check", image_check, CHECKS)):
            if value not in valid:
                raise ConfigError(f"{option} must be one of {', '.join(valid)}, got {value!r}")
        size = self.image_size(image_size)
        classes = self.class_names(data_dir)
        train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
        found = [find_part(folder, classes) for folder in (train_dir, val_dir)]
        count = sum(len(part.samples) for part in found)
        if count >= ANNOUNCED_CHECK:
            log.info("Checking %s image files under %s (%s)", f"{count:,}", data_dir, image_check)
        parts = [check_part(part, image_check, max_pixels) for part in found]
        settle_bad_images(self.name, parts, bad_images)
        full, test = self.scan(train_dir, data_dir, parts[0]), self.scan(val_dir, data_dir, parts[1])
        train, valid = stratified_split(full.targets, valid_size, split_seed)
        return DataSplits(
            train=subset(full, train.tolist(), train_transform(size)),
            valid=subset(full, valid.tolist(), eval_transform(size)) if valid_size > 0 else None,
            test=subset(test, range(len(test)), eval_transform(size)),
            info=DatasetInfo(self.name, len(classes), (3, size, size)),
        )

    def scan(self, folder: str, data_dir: str, part: ImagePart) -> ImageFolder:
        """The ImageFolder of ``folder`` holding ``part``'s images; a class folder without any is a DataError."""
        from torchvision.datasets.folder import IMG_EXTENSIONS

        classes = class_folders(folder)
        empty = sorted(set(classes) - {classes[index] for _, index in part.samples})
        if empty:
            left_out = f" ({len(part.bad_files)} left out as unreadable)" if part.bad_files else ""
            raise DataError(f"dataset {self.name!r}: no images in {folder} for the classes {', '.join(empty)}"
                            f"{left_out}; supported extensions: {', '.join(IMG_EXTENSIONS)}; "
                            f"{self.expected_layout(data_dir)}")
        return image_folder_of(folder, part.samples)


@DATASETS.register("imagenet")
class ImageNet(ImageFolderSource):
    """ImageNet (ILSVRC 2012) as an ImageFolder tree with val/ sorted into class folders; 224x224 crops."""

    name = "imagenet"
    default_num_classes = 1000
