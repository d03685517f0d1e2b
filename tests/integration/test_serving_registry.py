"""Serving the registry champion: the bundle the pipeline logs loads, and a moved alias swaps the model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ml.stages import serving_bundle

pytestmark = pytest.mark.integration


def test_champion_bundle_loads_and_classifies(smoke_champion):  # noqa: F811
    settings = smoke_champion.settings
    bundle = serving_bundle.load(settings)
    assert bundle.version == smoke_champion.version and bundle.run_id == smoke_champion.run_id
    assert bundle.classes == settings.classes and bundle.dataset_version == smoke_champion.snapshot.version
    assert bundle.detector is not None and bundle.index is not None and bundle.class_histograms is not None
    x_val, y_val = smoke_champion.snapshot.arrays["val"]
    results = bundle.classify(x_val[:8])
    assert all(len(r["similar"]) == 4 for r in results)
    assert all(r["similar"][0]["id"].startswith(f"{bundle.dataset_version}:train:") for r in results)
    cached = settings.home / "serving" / "bundles" / smoke_champion.run_id  # keyed by run, not version number
    assert (cached / "bundle" / "bundle.json").is_file() and (cached / "model").is_dir()
    leftovers = list((settings.home / "serving" / "bundles").glob("*/.download-*"))
    assert leftovers == [], "temporary download folders must be cleaned up"
    again = serving_bundle.load(settings)  # cached bundle dir: no second download
    np.testing.assert_allclose(again.classify(x_val[:2])[0]["probabilities"], results[0]["probabilities"],
                               atol=1e-5)


def test_alias_move_swaps_the_bundle_whole(monkeypatch):
    """The follower builds the new bundle first and swaps one reference; a failed load keeps the old one."""
    from serving.champion import ChampionFollower

    old, new = SimpleNamespace(version="1"), SimpleNamespace(version="2")
    worker = SimpleNamespace(bundle=old, metrics=None)
    follower = ChampionFollower(SimpleNamespace(alias_poll_seconds=30.0, bundle_retry_max_s=900.0), worker)
    monkeypatch.setattr(serving_bundle, "champion_version", lambda settings: "2")
    monkeypatch.setattr(serving_bundle, "load", lambda settings: new)
    assert follower.refresh() and worker.bundle is new

    def broken(settings):
        raise RuntimeError("artifact download failed")

    monkeypatch.setattr(serving_bundle, "champion_version", lambda settings: "3")
    monkeypatch.setattr(serving_bundle, "load", broken)
    assert not follower.refresh() and worker.bundle is new


@pytest.mark.parametrize("defect", ["classes", "digest"])
def test_broken_champion_is_refused_and_the_old_one_keeps_serving(smoke_champion, tmp_path, defect,  # noqa: F811
                                                                   caplog):
    """A real registered version whose bundle lists 12 classes (or whose files differ from its digest tag)."""
    import json
    import shutil

    import mlflow
    from mlflow import MlflowClient

    from ml.digests import tree_digest
    from serving.champion import ChampionFollower

    settings = smoke_champion.settings
    good = serving_bundle.load(settings)
    cached = settings.home / "serving" / "bundles" / smoke_champion.run_id
    bad = tmp_path / "bad"
    shutil.copytree(cached / "bundle", bad / "bundle")
    shutil.copytree(cached / "model", bad / "model")
    info = json.loads((bad / "bundle" / "bundle.json").read_text())
    if defect == "classes":
        info["classes"] = info["classes"][:-1]
    (bad / "bundle" / "bundle.json").write_text(json.dumps(info))
    client = MlflowClient(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=client.get_run(smoke_champion.run_id).info.experiment_id) as run:
        mlflow.log_artifacts(str(bad / "bundle"), "bundle")
        mlflow.log_artifacts(str(bad / "model"), "model")
    mv = client.create_model_version(settings.model_name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    tags = {"bundle": tree_digest(bad / "bundle"), "model": tree_digest(bad / "model")}
    if defect == "digest":
        tags["bundle"] = "0" * 64  # what the gate registered is not what the store now holds
    for artifact, digest in tags.items():
        client.set_model_version_tag(settings.model_name, mv.version, f"gate.{artifact}_sha256", digest)
    worker = SimpleNamespace(bundle=good, metrics=None)
    client.set_registered_model_alias(settings.model_name, "champion", mv.version)
    try:
        follower = ChampionFollower(settings, worker)
        assert not follower.refresh()
        assert worker.bundle is good and follower.failures[str(mv.version)][0] == 1
        why = "(smoke, attempt 1)" if defect == "classes" else "(digest, attempt 1)"
        assert f"champion version {mv.version} refused {why}" in caplog.text
        x_val, _ = smoke_champion.snapshot.arrays["val"]
        assert len(worker.bundle.classify(x_val[:2])) == 2  # the old champion keeps answering
    finally:
        client.set_registered_model_alias(settings.model_name, "champion", smoke_champion.version)
        client.delete_model_version(settings.model_name, mv.version)
