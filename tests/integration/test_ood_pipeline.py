"""The fit_ood and build_bundle stages against a real MLflow server and a smoke-trained run: metrics on held-out
outlier classes, table, plot and bundle/ artifacts stored without pickle."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ml.ood.outlier_data import class_groups
from tests.fixtures.training import smoke_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def outlier_archive(path, n_groups: int = 6, per_group: int = 15):
    """A flat archive of ImageNet-style names: checkerboards and gradients unlike the tiny snapshot's stripes."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for g in range(n_groups):
            for i in range(per_group):
                yy, xx = np.mgrid[:48, :48]
                base = ((xx // (3 + g) + yy // (3 + g)) % 2) * 200 if g % 2 else (xx + yy) * 2.5
                img = np.clip(base[..., None] + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(img).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"ood/n9{g:07d}_{i}.JPEG")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


@pytest.fixture(scope="module")
def fitted(smoke_run, tmp_path_factory):  # noqa: F811
    from ml.stages.build_bundle import build_bundle
    from ml.stages.fit_ood import fit_ood

    archive = outlier_archive(tmp_path_factory.mktemp("ood") / "ood.tar.gz")
    settings = smoke_run.settings.with_(outlier_sources=(f"folder:{archive}",))
    result = fit_ood(settings, smoke_run.run_id)
    built = build_bundle(settings, smoke_run.run_id)
    assert built["similarity_images"] == len(smoke_run.snapshot.arrays["train"][1])
    return result


def test_result_names_default_and_every_detector(fitted):
    assert fitted["default_detector"] in fitted["auroc"]
    fitted_alone = {"knn", "mahalanobis", "energy", "msp", "vim", "fused", "fused3", "other_class", "other_binary",
                    "pixel_stats"}
    # ... and the chosen one paired with the pixel guard (ml.ood.guarded), served unless it loses AUROC
    assert set(fitted["auroc"]) - fitted_alone <= {f"{name}_guarded" for name in fitted_alone}
    assert fitted_alone <= set(fitted["auroc"])
    assert fitted["primary_ood_set"] == "heldout"
    assert all(0.0 <= v <= 1.0 for v in fitted["auroc"].values())
    assert fitted["heldout_auroc"] == fitted["auroc"][fitted["default_detector"]]


def test_metrics_tags_and_evaluation_artifacts_are_logged(smoke_run, fitted):  # noqa: F811
    from mlflow.tracking import MlflowClient

    client = MlflowClient(smoke_run.settings.mlflow_tracking_uri)
    run = client.get_run(smoke_run.run_id)
    for name in fitted["auroc"]:
        assert run.data.metrics[f"ood_auroc_{name}"] == pytest.approx(fitted["auroc"][name])
        assert run.data.metrics[f"ood_auroc_{name}_heldout"] == pytest.approx(fitted["auroc"][name])
        for metric in ("fpr95", "catch"):
            assert f"ood_{metric}_{name}_heldout" in run.data.metrics
            assert f"ood_{metric}_{name}_synthetic_noise" in run.data.metrics
        assert f"ood_fpr95_{name}" in run.data.metrics and f"ood_id_reject_{name}" in run.data.metrics
    assert run.data.metrics["ood_heldout_auroc"] == pytest.approx(fitted["heldout_auroc"])
    assert run.data.tags["ood_default_detector"] == fitted["default_detector"]
    assert run.data.tags["ood_primary_set"] == "heldout"
    groups = class_groups([f"n9{g:07d}" for g in range(6)])  # only the evaluate group's classes were scored
    assert run.data.tags["ood_heldout_classes"].split(",") == sorted(c for c, g in groups.items() if g == "evaluate")
    report = {f.path for f in client.list_artifacts(smoke_run.run_id, "ood_evaluation")}
    assert report == {"ood_evaluation/ood_roc.png", "ood_evaluation/ood_table.md", "ood_evaluation/ood_table.json"}


def test_bundle_loads_back_and_works(smoke_run, fitted, tmp_path):  # noqa: F811
    import mlflow

    from ml.imagenet import load_mapping
    from ml.ood import OODFeatures, load_default_detector, load_summary
    from ml.similarity import SimilarityIndex

    root = mlflow.artifacts.download_artifacts(f"runs:/{smoke_run.run_id}/bundle", dst_path=str(tmp_path))
    summary = load_summary(f"{root}/ood")
    from pathlib import Path

    assert {p.suffix for p in Path(root, "ood").iterdir()} == {".json", ".npz"}  # no joblib, no pickle
    assert summary["default_detector"] == fitted["default_detector"]
    detector = load_default_detector(f"{root}/ood")
    rng = np.random.default_rng(0)
    c = len(smoke_run.settings.classes)
    features = OODFeatures(rng.normal(size=(5, detector_dim(f"{root}/similarity/index.npz"))), rng.normal(size=(5, c)),
                           np.full((5, c), 1 / c), rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8))
    assert detector.score(features).is_ood.shape == (5,)
    index = SimilarityIndex.load(f"{root}/similarity/index.npz")
    x_train = smoke_run.snapshot.arrays["train"][0]
    assert len(index) == len(x_train)
    hit = index.query(np.asarray(index.embeddings_[0]), np.full(c, 1 / c), top_classes=c)[0]
    assert hit.id.startswith(f"{smoke_run.snapshot.version}:train:") and hit.distance < 1e-3
    assert load_mapping(f"{root}/imagenet/mapping.txt")


def detector_dim(index_path: str) -> int:
    with np.load(index_path) as data:
        return data["embeddings"].shape[1]
