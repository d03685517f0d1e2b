"""The Bento's service entry: serve the bundle baked into the Bento, else the registry champion.

`serving/build.py` copies a bundle dir (model.keras + bundle/) to `baked_bundle/` in the
build context; this module points the service at it before `serving.service` is imported,
so `bentoml serve <tag>` needs no registry, store of models or network. An explicit
VISIONLOOP_BUNDLE_DIR in the environment still wins.
"""

from __future__ import annotations

import os
from pathlib import Path

BAKED_DIR = Path(__file__).resolve().parents[1] / "baked_bundle"
VERSION_FILE = "VERSION"  # the model version the baked bundle answers as (/model_info)


def point_at_baked_bundle(baked: Path = BAKED_DIR) -> None:
    """Set VISIONLOOP_BUNDLE_DIR (and its version) to the baked bundle, unless set or there is none."""
    if not (baked / "model.keras").is_file():
        return  # a Bento built without a model serves the registry champion
    version_file = baked / VERSION_FILE
    os.environ.setdefault("VISIONLOOP_BUNDLE_DIR", str(baked))
    os.environ.setdefault("VISIONLOOP_BUNDLE_VERSION",
                          version_file.read_text().strip() if version_file.is_file() else "baked")


# On purpose at import: BentoML imports this module in every worker before it builds the service.
point_at_baked_bundle()

from serving.service import VisionLoop  # noqa: E402  (the environment above must be set first)

__all__ = ["VisionLoop"]
