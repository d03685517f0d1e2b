"""The registry gate against a real MLflow server, with real models scored on real held-out images.

Candidates are runs holding the smoke model, or a copy whose logits for some classes are
swapped (a model that is wrong on those classes), plus the smoke run's bundle. The gate
scores both models itself, so every decision below comes from predictions, not from
logged numbers; only `ood_heldout_auroc` is logged by hand (helper G's OOD step logs it).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ml import layout
from ml.digests import tree_digest
from ml.stages import gate, tracking
from tests.fixtures.data import class_images, content_ids
from tests.fixtures.servers import BIN, ServerProcess, free_port, wait_http
from tests.fixtures.training import smoke_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
CORRECTED = "tinycorr"  # tiny0001 plus a corrections split


@pytest.fixture(scope="module")
def artifacts(smoke_run, tmp_path_factory):  # noqa: F811
    """Local copies of the smoke model, a model that confuses cat/dog/frog, and the bundle."""
    root = tmp_path_factory.mktemp("artifacts")
    good = mlflow.artifacts.download_artifacts(f"runs:/{smoke_run.run_id}/model", dst_path=str(root / "good"))
    bundle = mlflow.artifacts.download_artifacts(f"runs:/{smoke_run.run_id}/bundle", dst_path=str(root / "b"))
    classes = smoke_run.settings.classes
    swapped = {name: swapped_model(good, root / name, [classes.index(c) for c in group])
               for name, group in (("bad", ("cat", "dog", "frog")), ("catdog", ("cat", "dog")))}
    write_corrected_snapshot(smoke_run.snapshot)
    return {"good": good, "bundle": bundle, **swapped}


def swapped_model(model_dir: str, out: Path, cycle: list[int]) -> str:
    """The model with its logits for `cycle` classes rotated: images of one are called the next."""
    import mlflow.keras

    model = mlflow.keras.load_model(model_dir)
    layer = model.get_layer("logits")
    weights = [w.copy() for w in layer.get_weights()]
    for w in weights:
        w[..., cycle] = w[..., np.roll(cycle, 1)]
    layer.set_weights(weights)
    mlflow.keras.save_model(model, str(out))
    return str(out)


def copy_snapshot(store, source: str, version: str, extra_train: np.ndarray | None = None) -> None:
    """A copy of a snapshot; with extra_train, a pre-stable one (no ids) whose train split has more images."""
    for split in layout.SPLITS:
        for name in ("x", "y", "synthetic", "source", "ids"):
            array = store.get_array(layout.dataset_array(source, split, name))
            if extra_train is not None and split == "train" and name == "ids":
                continue
            if extra_train is not None and split == "train" and name == "x":
                array = np.concatenate([array, extra_train])
            store.put_array(layout.dataset_array(version, split, name), array)
    manifest = store.get_json(layout.dataset_manifest(source))
    store.put_json(layout.dataset_manifest(version), {**manifest, "version": version})


def write_corrected_snapshot(tiny) -> None:
    """tiny0001's splits plus 26 held-out corrections (2 per class, fresh images)."""
    store = tiny.store
    copy_snapshot(store, tiny.version, CORRECTED)
    rng = np.random.default_rng(99)
    n = len(tiny.settings.classes)
    x = np.concatenate([class_images(c, 2, rng, n) for c in range(n)])
    y = np.repeat(np.arange(n), 2)
    prefix = layout.dataset_prefix(CORRECTED)
    for name, array in (("x", x), ("y", y), ("synthetic", np.zeros(len(y), bool)),
                        ("source", np.zeros(len(y), np.int16)), ("ids", content_ids(x))):
        store.put_array(f"{prefix}corrections/{name}.npy", array)


@pytest.fixture
def settings(smoke_run):  # noqa: F811
    """A registered model of its own per test, so aliases start empty."""
    return smoke_run.settings.with_(model_name=f"gate-{uuid.uuid4().hex[:8]}", gate_min_accuracy=0.5)


def candidate(settings, artifacts: dict, model: str = "good", dataset_version: str = "tiny0001",
              ood: float | None = None) -> str:
    """A run holding a model, the smoke bundle and (optionally) the OOD metric; returns its run id."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run() as run:
        mlflow.log_param("dataset_version", dataset_version)
        if ood is not None:
            mlflow.log_metric("ood_heldout_auroc", ood)
        mlflow.log_artifacts(artifacts[model], "model")
        mlflow.log_artifacts(artifacts["bundle"], "bundle")
    return run.info.run_id


def tags(settings, version: str) -> dict[str, str]:
    return MlflowClient(settings.mlflow_tracking_uri).get_model_version(settings.model_name, version).tags


def versions(settings) -> list[str]:
    return [row["version"] for row in gate.list_versions(settings)]


def test_first_model_becomes_champion_with_its_numbers_and_digests(settings, artifacts):
    decision = gate.gate(settings, candidate(settings, artifacts))
    assert decision["promoted"] and decision["champion_version"] is None
    assert tracking.champion_version(settings) == decision["version"]
    assert tracking.champion_version(settings, "challenger") == decision["version"]
    version_tags = tags(settings, decision["version"])
    assert version_tags["gate.promoted"] == "True" and version_tags["gate.clean_n"] == "104"
    # A 3-epoch smoke model on easy tiny data: far above chance (1/13), well above the gate's floor.
    assert float(version_tags["gate.clean_accuracy"]) > 0.7 and version_tags["gate.excluded_n"] == "0"
    assert version_tags["gate.bundle_sha256"] == tree_digest(artifacts["bundle"])
    assert version_tags["gate.model_sha256"] == tree_digest(artifacts["good"])


def test_better_model_replaces_champion_and_worse_one_is_rejected(settings, artifacts):
    first = gate.gate(settings, candidate(settings, artifacts, "bad"))["version"]
    better = gate.gate(settings, candidate(settings, artifacts))
    assert better["promoted"] and tracking.champion_version(settings) == better["version"]
    assert tracking.champion_version(settings, "previous_champion") == first
    assert better["champion_clean_accuracy"] < better["clean_accuracy"] - 0.15  # 3 of 13 classes wrong
    worse = gate.gate(settings, candidate(settings, artifacts, "bad"))
    assert not worse["promoted"] and tracking.champion_version(settings) == better["version"]
    assert tracking.champion_version(settings, "challenger") == worse["version"]
    version_tags = tags(settings, worse["version"])
    assert version_tags["gate.promoted"] == "False" and "clean test accuracy" in version_tags["gate.reasons"]
    assert version_tags["gate.champion_accuracy"] == f"{better['clean_accuracy']:.4f}"


def test_corrections_must_improve_and_are_reported_apart_from_clean(settings, artifacts):
    gate.gate(settings, candidate(settings, artifacts, "bad", CORRECTED))
    better = gate.gate(settings, candidate(settings, artifacts, "good", CORRECTED))
    assert better["promoted"], better["reasons"]
    assert better["corrections_n"] == 26 and better["clean_n"] == 104
    assert better["corrections_accuracy"] > better["champion_corrections_accuracy"]
    same = gate.gate(settings, candidate(settings, artifacts, "good", CORRECTED))
    assert not same["promoted"] and tracking.champion_version(settings) == better["version"]
    assert "corrections accuracy" in same["reasons"][0] and "not better than champion" in same["reasons"][0]
    version_tags = tags(settings, same["version"])
    assert version_tags["gate.corrections_accuracy"] == version_tags["gate.champion_corrections_accuracy"]
    assert version_tags["gate.corrections_n"] == "26"


def test_a_recall_drop_on_one_class_is_rejected(settings, artifacts):
    settings = settings.with_(gate_epsilon=1.0)  # accuracy alone would let it through
    champion = gate.gate(settings, candidate(settings, artifacts))["version"]
    dropped = gate.gate(settings, candidate(settings, artifacts, "catdog"))
    assert not dropped["promoted"] and tracking.champion_version(settings) == champion
    assert dropped["worst_recall_class"] in ("cat", "dog") and dropped["worst_recall_drop"] > 0.5
    assert "recall of" in tags(settings, dropped["version"])["gate.reasons"]


@pytest.mark.parametrize("candidate_ood, promoted", [(0.97, True), (0.95, True), (0.94, True), (0.90, False)])
def test_ood_rule_refuses_a_candidate_that_detects_unknown_images_worse(settings, artifacts,
                                                                       candidate_ood, promoted):
    gate.gate(settings, candidate(settings, artifacts, ood=0.95))
    decision = gate.gate(settings, candidate(settings, artifacts, ood=candidate_ood))
    assert decision["promoted"] is promoted, decision["reasons"]
    assert decision["ood_heldout_auroc"] == pytest.approx(candidate_ood)
    if not promoted:
        assert "ood_heldout_auroc 0.9000 < champion 0.9500" in decision["reasons"][0]


def test_ood_rule_is_skipped_with_a_reason_when_a_run_lacks_the_metric(settings, artifacts):
    gate.gate(settings, candidate(settings, artifacts))
    decision = gate.gate(settings, candidate(settings, artifacts, ood=0.5))
    assert decision["promoted"]
    assert any("OOD rule skipped: the champion run has no ood_heldout_auroc" in n for n in decision["notes"])


def test_a_gate_retry_reuses_the_runs_version(settings, artifacts):
    run_id = candidate(settings, artifacts)
    first = gate.gate(settings, run_id)
    again = gate.gate(settings, run_id)
    assert again["version"] == first["version"] and again["promoted"] and again["reused"]
    assert versions(settings) == [first["version"]]


def test_a_champion_trained_on_the_candidates_test_images_is_compared_on_the_rest(settings, artifacts,
                                                                                  smoke_run):  # noqa: F811
    """A champion from a pre-stable snapshot whose train split holds half of today's test split."""
    store, tiny = smoke_run.snapshot.store, smoke_run.snapshot.version
    test_x = store.get_array(layout.dataset_array(tiny, "test", "x"))
    half, whole = f"half-{uuid.uuid4().hex[:6]}", f"whole-{uuid.uuid4().hex[:6]}"
    copy_snapshot(store, tiny, half, extra_train=test_x[:52])
    copy_snapshot(store, tiny, whole, extra_train=test_x)
    gate.gate(settings, candidate(settings, artifacts, dataset_version=half))
    decision = gate.gate(settings, candidate(settings, artifacts))
    assert decision["excluded_n"] == 52 and decision["clean_n"] == 52
    assert tags(settings, decision["version"])["gate.excluded_n"] == "52"
    other = settings.with_(model_name=f"{settings.model_name}-b")
    gate.gate(other, candidate(other, artifacts, dataset_version=whole))
    with pytest.raises(gate.GateError, match="no test image of tiny0001 is unseen"):
        gate.gate(other, candidate(other, artifacts))
    assert len(versions(other)) == 1


def test_missing_champion_data_fails_closed(settings, artifacts, smoke_run):  # noqa: F811
    """The champion's training snapshot is gone from the store: no guessing, no promotion."""
    from ml.storage import ObjectNotFound

    store = smoke_run.snapshot.store
    gone = f"gone-{uuid.uuid4().hex[:6]}"
    copy_snapshot(store, "tiny0001", gone)
    champion = gate.gate(settings, candidate(settings, artifacts, "bad", gone))["version"]
    store.delete(layout.dataset_array(gone, "train", "x"))
    with pytest.raises(ObjectNotFound):
        gate.gate(settings, candidate(settings, artifacts))
    assert tracking.champion_version(settings) == champion and versions(settings) == [champion]


@pytest.fixture
def own_mlflow(tmp_path, monkeypatch):
    """A second real MLflow server this test may stop and restart (same port, same database)."""
    port, root = free_port(), tmp_path / "mlflow"
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination",
            str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def start() -> ServerProcess:
        server = ServerProcess(args, root / "server.log", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        server.start()
        wait_http(f"http://127.0.0.1:{port}/health", 90, server.proc, server.log)
        return server

    servers = [start()]
    yield f"http://127.0.0.1:{port}", servers, start
    servers[-1].stop()


def test_a_registry_outage_during_the_gate_raises_and_promotes_nothing(settings, artifacts, own_mlflow):
    uri, servers, start = own_mlflow
    settings = settings.with_(mlflow_tracking_uri=uri)
    champion = gate.gate(settings, candidate(settings, artifacts, "bad"))["version"]
    run_id = candidate(settings, artifacts)
    servers[-1].stop()
    with pytest.raises(Exception):  # noqa: B017  (MlflowException or a connection error: either aborts)
        gate.gate(settings, run_id)
    servers.append(start())
    assert tracking.champion_version(settings) == champion and versions(settings) == [champion]
    retried = gate.gate(settings, run_id)  # the Airflow retry, once MLflow is back
    assert retried["promoted"] and versions(settings) == [retried["version"], champion]


def test_model_commands_list_promote_and_roll_back(settings, artifacts, monkeypatch):
    from typer.testing import CliRunner

    from ml.cli import app

    first = gate.gate(settings, candidate(settings, artifacts))["version"]
    second = gate.gate(settings, candidate(settings, artifacts, "bad"))["version"]
    monkeypatch.setenv("VISIONLOOP_MODEL_NAME", settings.model_name)
    runner = CliRunner()
    listed = runner.invoke(app, ["model", "list"])
    assert listed.exit_code == 0 and "rejected" in listed.output and "champion" in listed.output
    promoted = runner.invoke(app, ["model", "promote", second])
    assert promoted.exit_code == 0 and tracking.champion_version(settings) == second
    rolled = runner.invoke(app, ["model", "rollback"])
    assert rolled.exit_code == 0 and f"champion is v{first}" in rolled.output
    missing = runner.invoke(app, ["model", "promote", "999"])
    assert missing.exit_code == 2 and "no version" in missing.output
    assert gate.rollback(settings) == {"champion": second, "previous_champion": first}
