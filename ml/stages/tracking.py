"""The one MLflow helper of the stage layer: client set-up, registry lookups, artifact downloads, model loading.

Every stage talks to MLflow through these few calls (or, inside an open run, through
`mlflow.log_*`), so the tracking URI is set in one place and "no such alias" is told
apart from "server down" in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.config import Settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
# MLflow error codes that mean "no such model, version, alias or artifact", as opposed to a server that is down.
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


def client(settings: Settings) -> MlflowClient:
    """A client for settings' tracking server; also points the fluent API (`mlflow.start_run`, runs:/ URIs) at it."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return mlflow.MlflowClient(settings.mlflow_tracking_uri)


def is_missing(exc: BaseException) -> bool:
    """True for an MLflow error that says the thing asked for does not exist (not a down server)."""
    return getattr(exc, "error_code", None) in MISSING_CODES


def aliases(settings: Settings) -> dict[str, str]:
    """{alias: version} of the registered model; empty when it is not registered yet. Any other error raises."""
    from mlflow.exceptions import MlflowException

    try:
        model = client(settings).get_registered_model(settings.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise  # a down server is not "no champion"
    return {alias: str(version) for alias, version in model.aliases.items()}


def champion_version(settings: Settings, alias: str = CHAMPION) -> str | None:
    """The version behind an alias (default `champion`); None when the alias or the model does not exist."""
    return aliases(settings).get(alias)


def run_id_of_version(settings: Settings, version: str | int) -> str:
    """The training run a registered version was made from."""
    return client(settings).get_model_version(settings.model_name, str(version)).run_id


def dataset_version_of_run(settings: Settings, run_id: str) -> str:
    """The snapshot a training run trained on (its `dataset_version` param); ValueError when it has none."""
    version = client(settings).get_run(run_id).data.params.get("dataset_version")
    if not version:
        raise ValueError(f"run {run_id} has no dataset_version param: it was not made by `visionloop train`")
    return version


def download(settings: Settings, run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """Download `runs:/<run_id>/<artifact_path>` under dst; the local path of the file or folder."""
    import mlflow

    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{artifact_path}",
                                                    dst_path=str(dst),
                                                    tracking_uri=settings.mlflow_tracking_uri))


def load_dict(settings: Settings, run_id: str, artifact_path: str) -> dict:
    """A JSON artifact of a run, parsed."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="visionloop-artifact-") as tmp:
        return json.loads(download(settings, run_id, artifact_path, tmp).read_text())


def load_keras(path_or_uri: str | Path) -> Any:
    """A logged Keras model from a local folder or any MLflow URI (runs:/..., models:/...)."""
    import tempfile

    import mlflow.keras

    if Path(path_or_uri).is_dir():  # a local folder loads in place; dst_path would copy it first
        return mlflow.keras.load_model(str(path_or_uri))
    # Without dst_path MLflow downloads a URI's model into a mkdtemp() folder it never removes, so
    # every evaluate, gate and warm start left a model copy in /tmp. The model is in memory once loaded.
    with tempfile.TemporaryDirectory(prefix="visionloop-model-") as tmp:
        return mlflow.keras.load_model(str(path_or_uri), dst_path=tmp)


def load_run_model(settings: Settings, run_id: str) -> Any:
    """The Keras model a training run logged (`runs:/<run_id>/model`)."""
    client(settings)  # runs:/ URIs resolve through the fluent tracking URI
    return load_keras(f"runs:/{run_id}/model")


def served_forward(settings: Settings, run_id: str, workdir: str) -> tuple[object, str]:
    """(predictor, name) of the forward pass serving will run: the run's OpenVINO export where it chose
    reduced precision (so detectors are fitted and calibrated on the features serving computes), else
    TensorFlow (f32 OpenVINO matches it to 1e-6)."""
    from ml.inference import Predictor
    from ml.runtime import serving_predictor

    if settings.inference_runtime != "tensorflow":
        try:
            meta = load_dict(settings, run_id, "bundle/openvino/openvino.json")
        except Exception:  # noqa: BLE001  (no export: the run serves TensorFlow)
            meta = {}
        if meta.get("precision_hint") == "bf16":
            directory = download(settings, run_id, "bundle/openvino", workdir)
            predictor = serving_predictor(directory, settings.inference_runtime, settings.openvino_threads)
            if predictor is not None and predictor.effective_precision == "bf16":
                return predictor, "openvino-bf16"
    return Predictor(load_run_model(settings, run_id)), "tensorflow"


def load_version_model(settings: Settings, version: str | int) -> Any:
    """The Keras model behind a registered version (registered as a pyfunc: read its run's `model`)."""
    return load_run_model(settings, run_id_of_version(settings, version))
