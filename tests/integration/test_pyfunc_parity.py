"""The registered pyfunc answers like the running service: same label, probabilities and OOD verdict.

The smoke champion (real pipeline, real MLflow server) is served by `bentoml serve`; its run's
pyfunc is logged, registered with a model card, and loaded by `mlflow.pyfunc.load_model` in a
fresh Python process (as a user would, from the registry URI, with only the logged code).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.serving import png_bytes, start_service

pytestmark = pytest.mark.integration
PYFUNC_NAME = "visionloop-pyfunc-parity"
# Runs in a clean process from a folder outside the repo: `ml` must come from the pyfunc's code_paths.
LOAD_SCRIPT = """
import json, sys
from pathlib import Path
import mlflow.pyfunc, pandas as pd
uri, folder = sys.argv[1], Path(sys.argv[2])
blobs = [p.read_bytes() for p in sorted(folder.glob("*.img"))]
model = mlflow.pyfunc.load_model(uri)
import ml
out = {"ml_file": ml.__file__, "frame": model.predict(pd.DataFrame({"image": blobs})),
       "single": [model.predict({"image": [b]})[0] for b in blobs]}
# What `mlflow models serve` does with a JSON request: base64 for the binary column.
import base64
from mlflow.pyfunc.scoring_server import init
from starlette.testclient import TestClient
body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(blobs[0]).decode()]]}}
out["rest"] = TestClient(init(model)).post("/invocations", json=body).json()
print("RESULT " + json.dumps(out))
"""


def encoded(pixels: np.ndarray, fmt: str, size: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def sample_images(snapshot) -> list[bytes]:
    """Real validation images (as PNG, upscaled JPEG), noise, and one unreadable upload."""
    x_val = snapshot.arrays["val"][0]
    return ([encoded(x, "PNG") for x in x_val[:6]] + [encoded(x, "JPEG", 96) for x in x_val[6:9]]
            + [png_bytes(seed=s) for s in range(3)] + [png_bytes((200, 120), seed=9), b"this is not an image"])


def register_with_card(settings, run_id: str, uri: str, decision: dict) -> str:
    """Register the pyfunc as the gate should, and describe the version with its model card."""
    import mlflow
    from mlflow import MlflowClient

    from ml import layout
    from ml.model_card import describe_version, model_card
    from ml.storage import open_store

    client = MlflowClient(settings.mlflow_tracking_uri)
    version = str(mlflow.register_model(uri, PYFUNC_NAME).version)
    run = client.get_run(run_id)
    manifest = open_store(settings).get_json(layout.dataset_manifest(run.data.params["dataset_version"]))
    describe_version(client, PYFUNC_NAME, version, model_card(run, {**decision, "version": version}, manifest))
    return version


def load_in_fresh_process(uri: str, blobs: list[bytes], tmp_path: Path, tracking_uri: str) -> dict:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, blob in enumerate(blobs):
        (folder / f"{i:03d}.img").write_bytes(blob)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, uri, str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def classify_each(url: str, blobs: list[bytes]) -> list[httpx.Response]:
    with httpx.Client(timeout=60) as client:
        return [client.post(f"{url}/classify", files={"image": ("x", blob, "application/octet-stream")})
                for blob in blobs]


def test_registered_pyfunc_answers_like_the_service(smoke_champion, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    from ml.model_card import MODEL_DESCRIPTION
    from ml.stages.pyfunc import log_pyfunc

    settings, run_id = smoke_champion.settings, smoke_champion.run_id
    uri = log_pyfunc(settings, run_id)
    assert log_pyfunc(settings, run_id) == uri  # a retry logs nothing new
    version = register_with_card(settings, run_id, uri, smoke_champion.decision)
    blobs = sample_images(smoke_champion.snapshot)
    env = {"VISIONLOOP_HOME": str(tmp_path / "serve-home"), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "VISIONLOOP_MODEL_NAME": settings.model_name, "VISIONLOOP_IMAGENET_ENABLED": "false"}
    server, url = start_service(env, tmp_path / "serve.log")
    try:
        responses = classify_each(url, blobs)
    finally:
        server.stop()
    got = load_in_fresh_process(f"models:/{PYFUNC_NAME}/{version}", blobs, tmp_path, settings.mlflow_tracking_uri)
    repo_ml = Path(__file__).resolve().parents[2] / "ml"
    assert not got["ml_file"].startswith(str(repo_ml)) and Path(got["ml_file"]).parent.parent.name == "code"
    assert responses[-1].status_code == 422 and got["frame"][-1]["status"] == 422
    assert got["single"][-1] == got["frame"][-1]
    assert got["rest"] == {"predictions": [got["single"][0]]}, "mlflow models serve answers the same"
    # One image per call, as the service classifies requests that arrive one at a time: identical answers.
    for response, mine in zip(responses[:-1], got["single"][:-1], strict=True):
        served = response.json()
        assert response.status_code == 200
        assert mine.keys() == served.keys() - {"request_id", "model_version", "imagenet"}
        assert mine["label"] == served["label"] and mine["is_ood"] == served["is_ood"]
        assert list(mine["probabilities"]) == list(served["probabilities"])
        np.testing.assert_allclose(list(mine["probabilities"].values()), list(served["probabilities"].values()),
                                   atol=1e-5)
        assert mine["ood_threshold"] == served["ood_threshold"] and mine["ood_score"] == served["ood_score"]
        assert mine["confidence"] == pytest.approx(served["confidence"], abs=1e-5)
        assert mine["message"] == served["message"] and mine["similar"] == served["similar"]
    # A batch changes the forward pass in the last float bits; the score is a conformal p-value over
    # ~130 calibration scores, so such a change can move it by a step (1/131) when it sits on a calibration score.
    for alone, batched in zip(got["single"][:-1], got["frame"][:-1], strict=True):
        assert batched["label"] == alone["label"] and batched["ood_threshold"] == alone["ood_threshold"]
        np.testing.assert_allclose(list(batched["probabilities"].values()), list(alone["probabilities"].values()),
                                   atol=1e-5)
        assert batched["ood_score"] == pytest.approx(alone["ood_score"], abs=0.02)
    client = MlflowClient(settings.mlflow_tracking_uri)
    assert client.get_registered_model(PYFUNC_NAME).description == MODEL_DESCRIPTION
    card = client.get_model_version(PYFUNC_NAME, version).description
    assert f"Run `{run_id}`" in card and f"Dataset version `{smoke_champion.snapshot.version}`" in card
    assert "**promoted to champion**" in card and "| test recall |" in card
