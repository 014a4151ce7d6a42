"""A dataset of uint8 images held in memory, normalised on access and optionally augmented."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Index = Union[Tensor, slice]


class InMemoryImages(Dataset):
    """Images (N, C, H, W) uint8 and labels in memory; items are normalised float images and int labels.

    Keeping uint8 and normalising per access costs a quarter of the memory of float storage.
    Without augmentation, whole batches can be gathered at once with :meth:`batch`.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Optional[Callable[[Tensor], Tensor]] = None,
        classes: Optional[Sequence[str]] = None,
    ):
        self.images = images
        self.targets = targets.long()
        self.augment = augment
        self.classes = list(classes) if classes is not None else None
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def select(cls, images: Tensor, targets: Tensor, indices: np.ndarray, **kwargs) -> "InMemoryImages":
        """A dataset of the samples at ``indices`` (copied)."""
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return cls(images[index], targets[index], **kwargs)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        image = self.images[i]
        if self.augment is not None:
            image = self.augment(image)
        return self._normalise(image.unsqueeze(0))[0], int(self.targets[i])

    @property
    def supports_batches(self) -> bool:
        """True when :meth:`batch` gives the same items as indexing one by one (no random augmentation)."""
        return self.augment is None

    def batch(self, index: Index) -> Tuple[Tensor, Tensor]:
        """Normalised images and labels of the samples at ``index`` (a LongTensor or a slice)."""
        return self._normalise(self.images[index]), self.targets[index]

    def _normalise(self, images: Tensor) -> Tensor:
        return (images.float() - 255.0 * self._mean) / self._scale
