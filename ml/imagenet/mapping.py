"""Read the shipped mapping file: ImageNet-1k output index -> VisionLoop class name."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MAPPING_PATH = PACKAGE_DIR / "mapping.txt"
CLASSES_PATH = PACKAGE_DIR / "imagenet_classes.txt"  # the 1,000 classes in classifier output order
CLASS_HEADER = "# class:"


def parse_mapping(text: str) -> dict[str, str]:
    """wnid -> our class for every synset line of a mapping file (roots and all their descendants)."""
    owner: dict[str, str] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith(CLASS_HEADER):
            current = line[len(CLASS_HEADER):].strip()
        elif line and not line.startswith("#"):
            wnid, sep, _ = line.lstrip("-").partition(":")
            if not sep or current is None:
                raise ValueError(f"mapping line {number} is not '<wnid>: <names>' inside a '# class:' block: {raw!r}")
            owner[wnid.strip()] = current
    return owner


def load_imagenet_classes(path: str | Path = CLASSES_PATH) -> list[tuple[str, str]]:
    """[(wnid, names)] in the ImageNet classifiers' output order."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            wnid, _, names = line.partition(":")
            rows.append((wnid.strip(), names.strip()))
    return rows


def load_mapping(path: str | Path = MAPPING_PATH, classes_path: str | Path = CLASSES_PATH) -> dict[int, str]:
    """ImageNet output index -> our class name, for the indices that have a counterpart."""
    owner = parse_mapping(Path(path).read_text())
    return {i: owner[wnid] for i, (wnid, _) in enumerate(load_imagenet_classes(classes_path)) if wnid in owner}
