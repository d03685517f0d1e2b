"""ImageNet ResNet50 as a second opinion: its 1,000 classes mapped onto ours through WordNet."""

from ml.imagenet.labeler import ImageNetLabeler
from ml.imagenet.mapping import (
           CLASSES_PATH,
           MAPPING_PATH,
           load_imagenet_classes,
           load_mapping,
           parse_mapping,
)

__all__ = ["CLASSES_PATH", "MAPPING_PATH", "ImageNetLabeler", "load_imagenet_classes", "load_mapping",
           "parse_mapping"]
