"""The lock installs where users are: every pinned package has a wheel for each supported platform.

Exports the lock's pins (all extras) and asks uv to resolve exactly those pins for each target
platform with binary wheels only, so a platform without a wheel (tensorflow-cpu on macOS, say)
fails here instead of on a user's `make up`. Needs the package index (the one network CI has).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

# uv's --python-platform name for each environment in pyproject's [tool.uv]. On aarch64 the
# floor is glibc 2.35 (Debian 12, Ubuntu 22.04): OpenVINO publishes no older aarch64 wheel.
PLATFORMS = {
    "linux x86_64": "x86_64-manylinux_2_28",
    "linux aarch64": "aarch64-manylinux_2_35",
    "macOS arm64": "aarch64-apple-darwin",
}


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (make venv installs it)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(REPO / ".visionloop/cache/uv"))}
    return subprocess.run([_uv(), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lock") / "requirements.txt"
    done = _run("export", "--frozen", "--no-hashes", "--all-extras", "--no-emit-project", "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_lock_matches_pyproject():
    done = _run("lock", "--check")
    assert done.returncode == 0, f"uv.lock is stale or does not resolve: {done.stderr[-2000:]}"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_every_pin_has_a_wheel_for(platform, pins, tmp_path):
    out = tmp_path / "resolved.txt"
    done = _run("pip", "compile", "--quiet", "--python-version", "3.11", "--python-platform",
                PLATFORMS[platform], "--only-binary", ":all:", "--no-deps", str(pins), "-o", str(out))
    assert done.returncode == 0, f"{platform}: {done.stderr[-2000:]}"
    resolved = out.read_text()
    expected_tf = "tensorflow-cpu==" if platform == "linux x86_64" else "tensorflow=="
    assert expected_tf in resolved, f"{platform} gets no TensorFlow build:\n{resolved[:500]}"
