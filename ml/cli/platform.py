"""`visionloop platform` commands: start, stop and inspect the local platform."""

from __future__ import annotations

import typer

from ml.cli.common import fail, load_settings, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command()
def up(
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline",
                                  help="When no champion model exists, run dataset_build -> training_pipeline."),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="Follow the first pipeline until a champion exists, then start serving."),
    timeout: float = typer.Option(3600, "--timeout", min=1, help="Seconds to wait for the first champion."),
) -> None:
    """Start MLflow and Airflow (and BentoML once a champion exists) on 127.0.0.1.

    Each server runs in its own process group; logs go to $VISIONLOOP_HOME/logs/<component>.log
    and pid files to $VISIONLOOP_HOME/run/. Running it again starts nothing twice.
    """
    from ml.platform.launcher import up as launch
    from ml.platform.processes import PlatformError

    settings = load_settings()
    with user_errors():
        try:
            launch(settings, say=typer.echo, pipeline=pipeline, wait=wait, timeout_s=timeout)
        except PlatformError as exc:
            fail(str(exc))


@app.command()
def down() -> None:
    """Stop every process group `platform up` started (SIGTERM, then SIGKILL after 20 s), nothing else."""
    from ml.platform.launcher import down as stop

    stop(load_settings(), say=typer.echo)


@app.command()
def status() -> None:
    """List each component with its URL, pid and health (and the champion version)."""
    from ml.platform.launcher import status as inspect

    rows = inspect(load_settings())
    typer.echo(f"{'component':10} {'health':8} {'pid':>7}  {'url':26} detail")
    for row in rows:
        colour = typer.colors.GREEN if row.health == "healthy" else typer.colors.YELLOW
        health = typer.style(f"{row.health:8}", fg=colour)
        typer.echo(f"{row.name:10} {health} {row.pid or '-':>7}  {row.url:26} {row.detail}")
