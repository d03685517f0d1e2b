"""Build the VisionLoop Bento without the network: code, data files, locked requirements, optionally a model.

`python -m serving.build [--bundle-dir DIR | --champion] [--version V]` stages a build
context (a temporary directory): `serving/`, `ml/`, `serving/bentofile.yaml`,
`requirements-serving.txt` exported from uv.lock by uv (every runtime pin with its
platform markers, minus the trees only Airflow and the CLI need) and, to bake a model in, `baked_bundle/`
(model.keras beside bundle/, the `ServingBundle.from_dir` layout). It then runs
`bentoml build` and prints the tag. `bentoml serve <tag>` serves the baked bundle with
no registry (`serving.bento_entry`), or the registry champion when none was baked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "uv.lock"
BENTOFILE = Path(__file__).with_name("bentofile.yaml")
REQUIREMENTS = "requirements-serving.txt"  # bentofile.yaml's python.requirements_txt
BAKED = "baked_bundle"  # serving.bento_entry.BAKED_DIR's name
# Direct dependencies of the project that the service never imports (the scheduler, the CLI).
NOT_SERVING = frozenset({"apache-airflow", "typer"})
CODE_DIRS = ("serving", "ml")
LOCAL_UV = REPO / ".tools" / "bin" / "uv"


def find_uv() -> str:
    """uv on PATH, else where `make venv` installs it; both `uv export` and `bentoml build` need it."""
    found = shutil.which("uv") or (str(LOCAL_UV) if LOCAL_UV.is_file() else None)
    if found is None:
        raise SystemExit("serving.build needs uv (it downloads nothing here): run `make venv` or `pip install uv`")
    return found


def lock_requirements(exclude: frozenset[str] = NOT_SERVING) -> list[str]:
    """uv.lock's pins for everything the project runs on, minus what only `exclude` needs (`uv export --prune`)."""
    argv = [find_uv(), "--no-cache", "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header",
            "--no-annotate", *(arg for name in sorted(exclude) for arg in ("--prune", name))]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, "UV_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith(("#", "-"))]


def stage_context(target: Path, bundle_dir: Path | None = None, version: str = "local") -> Path:
    """Fill `target` with what `bentoml build` packages: code, bentofile, requirements, a baked bundle."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE_DIRS:
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    shutil.copyfile(BENTOFILE, target / "bentofile.yaml")
    (target / REQUIREMENTS).write_text("\n".join(lock_requirements()) + "\n")
    if bundle_dir is not None:
        if not (bundle_dir / "model.keras").is_file() or not (bundle_dir / "bundle" / "bundle.json").is_file():
            raise SystemExit(f"{bundle_dir} is not a bundle dir: it needs model.keras and bundle/bundle.json")
        shutil.copytree(bundle_dir, target / BAKED, ignore=ignore)
        (target / BAKED / "VERSION").write_text(f"{version}\n")
    return target


def fetch_champion(target: Path) -> tuple[Path, str]:
    """The registry champion as a bundle dir (verified and smoke-tested like serving does) and its version."""
    from ml.config import Settings
    from ml.stages import serving_bundle

    return serving_bundle.export(Settings.from_env(), target)


def _uv_on_path() -> None:
    """Put uv on PATH: `bentoml build` looks it up (and would pip-install it) though it resolves nothing here."""
    uv = Path(find_uv())
    if shutil.which("uv") != str(uv):
        os.environ["PATH"] = os.pathsep.join([str(uv.parent), os.environ.get("PATH", "")])


def build(bundle_dir: Path | None = None, version: str = "local", champion: bool = False) -> str:
    """Stage a context, `bentoml build` it into BENTOML_HOME and return the Bento's tag."""
    import bentoml

    _uv_on_path()
    with tempfile.TemporaryDirectory(prefix="visionloop-bento-") as tmp:
        if champion:
            bundle_dir, version = fetch_champion(Path(tmp) / "champion")
        context = stage_context(Path(tmp) / "context", bundle_dir, version)
        bento = bentoml.bentos.build_bentofile(str(context / "bentofile.yaml"), build_ctx=str(context),
                                               labels={"model_version": version} if bundle_dir else None)
    return str(bento.tag)


def main(argv: list[str] | None = None) -> None:
    """CLI: print the built tag on the last line."""
    parser = argparse.ArgumentParser(prog="python -m serving.build", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle-dir", type=Path, help="bake <dir>/model.keras + <dir>/bundle/ into the Bento")
    source.add_argument("--champion", action="store_true", help="bake the registry champion (MLFLOW_TRACKING_URI)")
    parser.add_argument("--version", default="local", help="model version a --bundle-dir bundle reports "
                        "(--champion reports its registry version)")
    parser.add_argument("--requirements", action="store_true", help="only print requirements-serving.txt")
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(lock_requirements()))
        return
    print(build(args.bundle_dir.absolute() if args.bundle_dir else None, args.version, args.champion))


if __name__ == "__main__":
    sys.exit(main())
