"""The `visionloop` command line: one sub-command group per stage."""

from __future__ import annotations

import typer

from ml.cli import data, model, monitor, platform, serve, train

app = typer.Typer(
    name="visionloop",
    help="VisionLoop: keep a 13-class image classifier right while the world it sees changes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data", help="Build and inspect versioned dataset snapshots.")
app.add_typer(train.app, name="train", help="Train a model and track it in MLflow.")
app.add_typer(model.app, name="model", help="List, promote and roll back registered models.")
app.add_typer(serve.app, name="serve", help="Serve the champion model over HTTP.")
app.add_typer(monitor.app, name="monitor", help="Compute drift over logged requests.")
app.add_typer(platform.app, name="platform", help="Start, stop and inspect the local platform.")
