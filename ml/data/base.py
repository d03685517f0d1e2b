"""What every source returns and the errors a user can act on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ml.imaging import IMAGE_SIZE

# Source kinds whose images count as "user images" (see docs/architecture.md).
USER_KINDS = ("folder", "feedback")
MAX_EXAMPLES = 5  # skipped paths shown in reports; the count is always complete


class DataError(ValueError):
    """The inputs cannot make a dataset; the message says what to fix."""


def empty_images() -> np.ndarray:
    return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


@dataclass
class Loaded:
    """Images from one source: uint8 (N,32,32,3), class ids, and what was skipped and why."""

    x: np.ndarray = field(default_factory=empty_images)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unknown_classes: Counter = field(default_factory=Counter)  # folder name -> files skipped
    notes: list[str] = field(default_factory=list)
    ids: np.ndarray | None = None  # identities (ml.data.identity); None: the pixels' content hash

    def __len__(self) -> int:
        return len(self.y)


class Source(ABC):
    """One place images come from. `checksum` must change whenever the images could."""

    kind: str = ""

    @property
    @abstractmethod
    def name(self) -> str:
        """Short human name, unique within one build (e.g. 'cifar10', 'folder:/data/mine')."""

    @abstractmethod
    def checksum(self) -> str:
        """A content checksum of the inputs, cheap compared with decoding them."""

    @abstractmethod
    def load(self, classes: tuple[str, ...], workers: int = 1) -> Loaded:
        """Decode every image of the configured classes to 32x32 uint8."""

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "checksum": self.checksum()}


def class_index(classes: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(classes)}
