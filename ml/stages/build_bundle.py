"""Stage `build_bundle`: the rest of the run's serving bundle, the similarity index and the ImageNet mapping.

The index holds the embeddings of the snapshot's training images (rotation copies left
out) under their dataset ids, so `/classify` can show similar training images; the
mapping ships with the bundle so a version always serves the mapping it was built with.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ml import layout
from ml.config import Settings
from ml.stages import tracking
from ml.stages.fit_ood import train_features


def write_parts(out: Path, embeddings: np.ndarray, labels: np.ndarray, ids: list[str]) -> Path:
    """similarity/index.npz and imagenet/{mapping.txt, imagenet_classes.txt} under out."""
    from ml.imagenet import CLASSES_PATH, MAPPING_PATH
    from ml.similarity import SimilarityIndex

    SimilarityIndex().fit(embeddings, labels, ids).save(out / "similarity" / "index.npz")
    (out / "imagenet").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MAPPING_PATH, out / "imagenet" / "mapping.txt")
    shutil.copyfile(CLASSES_PATH, out / "imagenet" / CLASSES_PATH.name)  # the 1,000-class order it refers to
    return out


def build_bundle(settings: Settings, run_id: str) -> dict:
    """Embed the run's training images with its model; log `bundle/similarity/` and `bundle/imagenet/`."""
    client = tracking.client(settings)
    version = tracking.dataset_version_of_run(settings, run_id)
    x, y, keep = train_features(settings, version)
    with tempfile.TemporaryDirectory(prefix="visionloop-forward-") as workdir:  # the forward pass serving runs
        predictor, _ = tracking.served_forward(settings, run_id, workdir)
        embeddings = predictor.predict_batched(x).embeddings
    ids = [layout.image_id(version, "train", int(i)) for i in keep]
    with tempfile.TemporaryDirectory(prefix="visionloop-bundle-") as tmp:
        out = write_parts(Path(tmp), embeddings, y, ids)
        for part in ("similarity", "imagenet"):
            client.log_artifacts(run_id, str(out / part), f"bundle/{part}")
    return {"similarity_images": len(ids), "embedding_dim": int(embeddings.shape[1]),
            "artifacts": ["bundle/similarity", "bundle/imagenet"]}
