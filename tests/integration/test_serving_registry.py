"""Serving the registry champion: the bundle the pipeline logs loads, and a moved alias swaps the model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ml.bundle import ServingBundle
from tests.fixtures.pipeline import smoke_champion  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration


def test_champion_bundle_loads_and_classifies(smoke_champion):  # noqa: F811
    settings = smoke_champion.settings
    bundle = ServingBundle.from_registry(settings)
    assert bundle.version == smoke_champion.version and bundle.run_id == smoke_champion.run_id
    assert bundle.classes == settings.classes and bundle.dataset_version == smoke_champion.snapshot.version
    assert bundle.detector is not None and bundle.index is not None and bundle.class_histograms is not None
    x_val, y_val = smoke_champion.snapshot.arrays["val"]
    results = bundle.classify(x_val[:8])
    assert all(len(r["similar"]) == 4 for r in results)
    assert all(r["similar"][0]["id"].startswith(f"{bundle.dataset_version}:train:") for r in results)
    leftovers = list((settings.home / "serving" / "bundles").glob("*/.model-*"))
    assert leftovers == [], "MLflow's temporary model copies must be cleaned up"
    again = ServingBundle.from_registry(settings)  # cached bundle dir: no second download
    np.testing.assert_allclose(again.classify(x_val[:2])[0]["probabilities"], results[0]["probabilities"],
                               atol=1e-5)


def test_alias_move_swaps_the_bundle_whole(monkeypatch):
    """The poller builds the new bundle first and swaps one reference; a failed load keeps the old one."""
    import ml.bundle
    from serving.service import VisionLoop

    old, new = SimpleNamespace(version="1"), SimpleNamespace(version="2")
    service = SimpleNamespace(settings=None, worker=SimpleNamespace(bundle=old))
    monkeypatch.setattr(ml.bundle, "current_champion_version", lambda settings: "2")
    monkeypatch.setattr(ml.bundle.ServingBundle, "from_registry", classmethod(lambda cls, settings: new))
    VisionLoop.inner._refresh(service)
    assert service.worker.bundle is new

    def broken(cls, settings):
        raise RuntimeError("artifact download failed")

    monkeypatch.setattr(ml.bundle, "current_champion_version", lambda settings: "3")
    monkeypatch.setattr(ml.bundle.ServingBundle, "from_registry", classmethod(broken))
    VisionLoop.inner._refresh(service)
    assert service.worker.bundle is new
