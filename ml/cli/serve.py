"""`visionloop serve` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from ml.cli.common import fail, load_settings

app = typer.Typer(no_args_is_help=True)
SERVICE_TARGET = "serving.service:VisionLoop"
REPO = Path(__file__).resolve().parents[2]


@app.command()
def start(
    host: str = typer.Option(None, "--host", help="Interface to bind (default VISIONLOOP_SERVE_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="TCP port (default VISIONLOOP_SERVE_PORT, 3000)."),
    bundle_dir: Path = typer.Option(None, "--bundle-dir", exists=True, file_okay=False,
                                    help="Serve <dir>/model.keras + <dir>/bundle/ instead of the registry champion."),
) -> None:
    """Serve the champion over HTTP in the foreground (Ctrl-C stops it): the page, /classify, /feedback."""
    settings = load_settings(serve_host=host, serve_port=port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if bundle_dir is not None:
        env["VISIONLOOP_BUNDLE_DIR"] = str(bundle_dir.absolute())
    argv = [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE_TARGET,
            "--host", settings.serve_host, "--port", str(settings.serve_port)]
    typer.echo(f"serving on http://{settings.serve_host}:{settings.serve_port} (model: "
               f"{'bundle ' + str(bundle_dir) if bundle_dir else settings.model_name + '@champion'})")
    try:
        code = subprocess.call(argv, env=env, cwd=REPO)
    except FileNotFoundError:
        fail("bentoml is not installed in this environment; run `make venv`")
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command()
def status(
    host: str = typer.Option(None, "--host"), port: int = typer.Option(None, "--port"),
) -> None:
    """Print the model version the running service serves and its request-log backlog."""
    import httpx

    settings = load_settings(serve_host=host, serve_port=port)
    url = f"http://{settings.serve_host}:{settings.serve_port}/model_info"
    try:
        info = httpx.get(url, timeout=5).json()
    except httpx.HTTPError as exc:
        fail(f"no service at {url}: {exc}; start it with `visionloop serve start`")
    typer.echo(f"model_version={info['model_version']} ready={info['ready']} "
               f"spool_backlog={info['spool_backlog']} store_ok={info['store_ok']}")


@app.command()
def build(
    bundle_dir: Path = typer.Option(None, "--bundle-dir", exists=True, file_okay=False,
                                    help="Bake <dir>/model.keras + <dir>/bundle/ into the Bento."),
    champion: bool = typer.Option(False, "--champion", help="Bake the registry champion (verified, smoke-tested)."),
    version: str = typer.Option("local", "--version", help="Model version a --bundle-dir bundle reports."),
) -> None:
    """Build the Bento without the network and print its tag (`bentoml serve <tag>` serves it)."""
    if bundle_dir and champion:
        fail("--bundle-dir and --champion exclude each other: bake one model")
    from serving.build import build as build_bento

    typer.echo(build_bento(bundle_dir.absolute() if bundle_dir else None, version, champion))
