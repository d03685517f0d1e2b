"""The registered model's pyfunc: the service's `/classify` answer from `mlflow.pyfunc.load_model`.

`VisionLoopModel` (logged and registered by the gate stage, `ml.stages.gate`) loads the run's
Keras `model` and its `bundle/` into a `ServingBundle` and calls the same `classify` the service
calls, so labels, flip-TTA probabilities and the OOD verdict agree with `POST /classify`. Input (the signature): a pandas DataFrame
with a binary column `image`, one encoded image per row, or `{"image": [bytes, ...]}`
(base64 strings in `mlflow models serve` JSON). Output: one dict per image with the
`/classify` fields less request_id, model_version and imagenet; an unreadable image gets
`{"error": reason, "status": 413|415|422}` instead, like the service's 4xx answer.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from ml.config import Settings

log = logging.getLogger(__name__)
ARTIFACT = "pyfunc"  # name of the logged model in the run (the gate registers it)
REPO = Path(__file__).resolve().parents[2]
# The ml/ files this module, `ServingBundle.from_dir(..., imagenet=False)`, `classify` and `ml.answers`
# import: the pyfunc's code_paths.
CODE = ("__init__.py", "stages/__init__.py", "stages/pyfunc.py", "answers.py", "bundle.py", "config.py",
        "imaging.py", "inference.py", "model.py", "similarity.py", "ood", "monitoring/__init__.py",
        "monitoring/reference.py", "runtime.py")
# Distributions the loaded pyfunc imports; versions come from uv.lock, platform markers from pyproject.toml.
RUNTIME = ("mlflow", "keras", "tensorflow-cpu", "numpy", "pandas", "pillow", "scikit-learn", "scipy",
           "joblib", "threadpoolctl", "openvino")


class VisionLoopModel(mlflow.pyfunc.PythonModel):
    """Image bytes in, the service's classify answer out (label, probabilities, OOD verdict, neighbours)."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model artifact and the bundle directory into one ServingBundle."""
        import mlflow.keras

        from ml.bundle import ServingBundle

        model = mlflow.keras.load_model(context.artifacts["model"])
        self.bundle = ServingBundle.from_dir(context.artifacts["bundle"], model=model,
                                             run_id=str((context.model_config or {}).get("run_id", "")),
                                             imagenet=False)

    # No type hint on model_input: MLflow would read one as a schema and warn; the signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """One answer dict per input image, in input order."""
        return classify_bytes(self.bundle, image_bytes(model_input))


def image_bytes(model_input: Any) -> list[bytes]:
    """The encoded images of a DataFrame's `image` column, a list of bytes, or one bytes object (direct calls)."""
    import base64

    if hasattr(model_input, "columns"):
        if "image" not in model_input.columns:
            raise ValueError(f"expected a column 'image' of encoded image bytes, got {list(model_input.columns)}")
        items = list(model_input["image"])
    elif isinstance(model_input, (bytes, bytearray)):
        items = [model_input]
    else:
        items = list(model_input)
    # A str is base64 (JSON has no bytes type); bytes pass through unchanged.
    return [base64.b64decode(x) if isinstance(x, str) else bytes(x) for x in items]


def classify_bytes(bundle: Any, blobs: list[bytes], max_pixels: int | None = None) -> list[dict]:
    """Decode each image as the service does, classify the readable ones in one call, answer each."""
    import numpy as np

    from ml import imaging
    from ml.answers import answer_body, decode_refusal

    max_pixels = max_pixels or Settings.from_env().max_image_pixels  # the service's limit
    answers: list[dict | None] = [None] * len(blobs)
    readable: list[tuple[int, Any]] = []
    for i, data in enumerate(blobs):
        try:
            readable.append((i, imaging.prepare(data, imaging.SERVING_FORMATS, max_pixels, preview=False)))
        except Exception as exc:  # a decoder bug on one image must not fail the others
            status, reason = decode_refusal(exc)
            answers[i] = {"error": reason, "status": status}
    if readable:
        results = bundle.classify(np.stack([p.pixels for _, p in readable]))
        for (i, _), res in zip(readable, results, strict=True):
            answers[i] = answer_body(bundle, res)  # /classify less request_id, model_version, imagenet
    return answers  # type: ignore[return-value]


def log_pyfunc(settings: Settings, run_id: str, model_dir: str | Path | None = None,
               bundle_dir: str | Path | None = None) -> str:
    """Log `VisionLoopModel` into the run as `pyfunc` (its `model` and `bundle` as artifacts); its models:/ URI.

    Call it once the bundle is complete (after OOD fitting, the bundle and the reference pack):
    the pyfunc holds a copy. model_dir/bundle_dir: local copies already downloaded (the gate has
    them); without them the run's artifacts are downloaded. A run that has one already keeps it.
    """
    import mlflow

    from ml.stages import tracking

    tracking.client(settings)
    existing = logged_pyfunc(run_id)
    if existing:
        return existing
    with tempfile.TemporaryDirectory(prefix="visionloop-pyfunc-") as tmp:
        artifacts = {}
        for name, local in (("model", model_dir), ("bundle", bundle_dir)):
            artifacts[name] = str(local or tracking.download(settings, run_id, name, Path(tmp) / "download"))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name=ARTIFACT, python_model=VisionLoopModel(), artifacts=artifacts,
                                           code_paths=[str(stage_code(Path(tmp) / "code"))],
                                           pip_requirements=lock_requirements(), signature=signature(),
                                           model_config={"run_id": run_id})
    return info.model_uri


def logged_pyfunc(run_id: str) -> str | None:
    """The models:/ URI of the run's logged model named `pyfunc`, if it has one (a retried gate)."""
    import mlflow

    run = mlflow.get_run(run_id)
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                        filter_string=f"name = '{ARTIFACT}' AND source_run_id = '{run_id}'")
    return f"models:/{found[0].model_id}" if found else None


def signature() -> Any:
    """One binary column `image` in; the answers are dicts, so no output schema."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]))


def stage_code(target: Path) -> Path:
    """A copy of just the ml/ files the pyfunc imports, as the package `ml` (code_paths keeps the name)."""
    package = target / "ml"
    for rel in CODE:
        src, dst = REPO / "ml" / rel, package / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(src, dst)
    return package


def lock_requirements(lock: Path = REPO / "uv.lock", project: Path = REPO / "pyproject.toml") -> list[str]:
    """`name==version` for RUNTIME from uv.lock, with pyproject's platform markers (tensorflow vs -cpu)."""
    from packaging.requirements import Requirement

    if not lock.exists() or not project.exists():  # an installed copy without the repo: pin what runs
        from importlib.metadata import PackageNotFoundError, version

        installed = []
        for name in RUNTIME:
            try:
                installed.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                continue
        return installed
    versions = {p["name"]: p["version"] for p in tomllib.loads(lock.read_text())["package"] if "version" in p}
    declared = {}
    for line in tomllib.loads(project.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        declared[req.name] = req
    reqs = []
    for name in RUNTIME + ("tensorflow",):
        if name not in versions:
            raise KeyError(f"{name} is not in {lock.name}: the pyfunc cannot pin it")
        marker = declared[name].marker if name in declared else None
        reqs.append(f"{name}=={versions[name]}" + (f"; {marker}" if marker else ""))
    return reqs
