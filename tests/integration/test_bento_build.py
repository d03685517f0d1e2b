"""`python -m serving.build` packages a Bento offline; `bentoml serve <tag>` serves it from its own files.

The build and the server run with every proxy pointing at a closed port (any download
fails), the server with its working directory outside the repository, no PYTHONPATH and
a dead MLflow URI: it can only become ready from the bundle baked into the Bento.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from serving.build import LOCK, lock_requirements
from tests.fixtures.serving import _wait_ready, png_bytes, serving_bundle_dir  # noqa: F401

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}


PLATFORMS = [{"platform_machine": machine, "sys_platform": system}  # uv.lock's supported platforms
             for machine, system in (("x86_64", "linux"), ("aarch64", "linux"), ("arm64", "darwin"))]


def pins(lines: list[str]) -> dict[str, tuple[str, tuple[bool, ...]]]:
    """name -> (version specifier, whether it installs on each supported platform)."""
    found = {}
    for line in lines:
        if line.strip() and not line.startswith(("#", "-")):
            req = Requirement(line)
            found[req.name] = (str(req.specifier), tuple(req.marker.evaluate(p) if req.marker else True
                                                         for p in PLATFORMS))
    return found


@pytest.fixture(scope="module")
def bento(serving_bundle_dir, tmp_path_factory) -> tuple[str, Path]:  # noqa: F811
    """Build once with the smoke bundle baked in (version 7); (tag, the Bento's directory)."""
    directory, _ = serving_bundle_dir
    env = {**os.environ, **OFFLINE}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-m", "serving.build", "--bundle-dir", str(directory), "--version", "7"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1]
    name, version = tag.split(":")
    path = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    assert (path / "bento.yaml").is_file(), f"no Bento at {path}"
    return tag, path


def test_requirements_are_the_locked_versions_of_what_serving_needs():
    locked = {p["name"]: p["version"] for p in tomllib.loads(LOCK.read_text())["package"]}
    requirements = [Requirement(line) for line in lock_requirements()]
    names = {r.name for r in requirements}
    assert {"bentoml", "keras", "mlflow", "minio", "pillow", "python-multipart", "tensorflow-cpu"} <= names
    assert not names & {"apache-airflow", "apache-airflow-core", "typer", "pytest", "moto"}
    for req in requirements:
        assert str(req.specifier) == f"=={locked[req.name]}", req
        if req.marker is None or req.marker.evaluate():  # what this machine would install is what it has
            assert metadata.version(req.name) == locked[req.name], req
    tf = next(r for r in requirements if r.name == "tensorflow-cpu")
    assert not tf.marker.evaluate({"platform_machine": "arm64", "sys_platform": "darwin"})


def test_bento_holds_code_data_files_bundle_and_locked_requirements(bento):
    _, path = bento
    src = path / "src"
    for needed in ("ml/imagenet/imagenet_classes.txt", "ml/imagenet/mapping.txt", "serving/static/index.html",
                   "serving/static/app.js", "serving/service.py", "serving/bento_entry.py",
                   "baked_bundle/model.keras", "baked_bundle/bundle/bundle.json"):
        assert (src / needed).is_file(), f"{needed} is missing from the Bento"
    assert not list(src.rglob("__pycache__")) and not (src / "tests").exists()
    packaged = (path / "env" / "python" / "requirements.txt").read_text()
    assert pins(packaged.splitlines()) == pins(lock_requirements())  # BentoML rewrites the lines, not the pins
    # The ImageNet labeler's files load from the Bento's own copy of the code.
    check = ("import ml.imagenet as m, sys; assert m.__file__.startswith(sys.argv[1]), m.__file__; "
             "assert len(m.load_imagenet_classes()) == 1000; assert m.load_mapping()")
    done = subprocess.run([sys.executable, "-c", check, str(src)], cwd=src, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def serve_bento(tag: str, cwd: Path, env: dict[str, str]):
    """`bentoml serve <tag>` in cwd with no PYTHONPATH; (server, base URL) once /readyz answers 200."""
    from tests.fixtures.servers import BIN, ServerProcess, free_port, wait_http

    port, log = free_port(), cwd / "bento.log"
    server = ServerProcess([str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)], log,
                           env=env, cwd=cwd)
    with _without_pythonpath():
        server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/readyz", 180, server, log, wait_http)
    except Exception:
        server.stop()
        raise
    return server, url


@contextlib.contextmanager
def _without_pythonpath():
    saved = os.environ.pop("PYTHONPATH", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTHONPATH"] = saved


def test_built_bento_serves_offline_from_its_own_files(bento, serving_bundle_dir, tmp_path):  # noqa: F811
    tag, _ = bento
    _, settings = serving_bundle_dir
    env = {**OFFLINE, "VISIONLOOP_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    server, url = serve_bento(tag, tmp_path, env)  # the registry is unreachable: only the baked bundle can serve
    try:
        assert httpx.get(f"{url}/model_info").json()["model_version"] == "7"
        response = httpx.post(f"{url}/classify", files={"image": ("a.png", png_bytes(), "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["label"] in settings.classes
        page = httpx.get(f"{url}/")  # serving/static/ travels with the Bento
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.stop()


def test_champion_is_baked_from_the_registry(smoke_champion, tmp_path):  # noqa: F811
    settings = smoke_champion.settings
    env = {**os.environ, **OFFLINE, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "VISIONLOOP_MODEL_NAME": settings.model_name, "VISIONLOOP_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "serving.build", "--champion"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "it/s]" not in line)[-3000:]
    name, version = done.stdout.strip().splitlines()[-1].split(":")
    baked = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version / "src" / "baked_bundle"
    assert (baked / "VERSION").read_text().strip() == smoke_champion.version
    assert (baked / "model.keras").is_file()
    info = json.loads((baked / "bundle" / "bundle.json").read_text())
    assert info["dataset_version"] == smoke_champion.snapshot.version
