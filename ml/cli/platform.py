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
    With VISIONLOOP_CELERY_WORKERS=N > 0 (services mode, docs/scaling.md) Airflow runs as
    api-server, scheduler, dag-processor, triggerer and N Celery workers against the PostgreSQL
    and Redis named by AIRFLOW__DATABASE__SQL_ALCHEMY_CONN and AIRFLOW__CELERY__BROKER_URL.
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


@app.command()
def pipeline(
    airflow_url: str = typer.Option("", help="Airflow API server; default: the local platform's."),
    password: str = typer.Option("", envvar="AIRFLOW_ADMIN_PASSWORD", show_default=False,
                                 help="Airflow admin password; default: the one the local api-server generated."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the runs until a champion exists."),
    timeout: float = typer.Option(3600, "--timeout", min=1, help="Seconds to wait for the champion."),
) -> None:
    """Run the first pipeline (dataset_build -> training_pipeline) unless a champion exists.

    `platform up` does this itself; the compose stack's `pipeline` service calls this command.
    MLflow is read at MLFLOW_TRACKING_URI.
    """
    from ml.platform.components import airflow_password
    from ml.platform.components import airflow_url as local_airflow
    from ml.platform.launcher import run_pipeline
    from ml.platform.processes import PlatformError

    settings = load_settings()
    with user_errors():
        try:
            run_pipeline(settings, airflow_url or local_airflow(settings),
                         password or airflow_password(settings) or "", settings.mlflow_tracking_uri,
                         typer.echo, wait, timeout)
        except PlatformError as exc:
            fail(str(exc))


@app.command("wait-champion")
def wait_champion(
    timeout: float = typer.Option(0, "--timeout", min=0, help="Seconds to wait; 0 waits for ever."),
) -> None:
    """Block until the registry (at MLFLOW_TRACKING_URI) has a champion; the compose serving service uses it."""
    from ml.platform.launcher import wait_champion as wait

    if wait(load_settings(), typer.echo, timeout) is None:
        fail(f"no champion model after {timeout:.0f} s", code=1)
