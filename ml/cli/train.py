"""`visionloop train` commands."""

from __future__ import annotations

import typer

from ml.cli.common import load_settings, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run(
    dataset: str = typer.Option(None, "--dataset", help="Snapshot version; default: the newest one."),
    profile: str = typer.Option(None, "--profile", help="smoke, standard or full (default: VISIONLOOP_PROFILE)."),
    arch: str = typer.Option(None, "--arch", help="seed_cnn or airnet (default: the profile's)."),
    overrides: list[str] = typer.Option(None, "--set", metavar="FIELD=VALUE",
                                        help="Override a hyperparameter, repeatable: --set width=64 --set epochs=20."),
    init: str = typer.Option(None, "--init", help="scratch, or champion: fine-tune the serving champion "
                                                  "(default: VISIONLOOP_TRAIN_INIT, else scratch)."),
) -> None:
    """Train a model on a snapshot and log it to MLflow (it is not registered: see `visionloop model`)."""
    settings = load_settings(profile=profile)
    with user_errors():
        from ml.hparams import parse_overrides
        from ml.train import newest_dataset, train_model

        changes = parse_overrides(overrides) | ({"init": init} if init else {})
        version = dataset or newest_dataset(settings)
        typer.echo(f"training on dataset {version} (profile {settings.profile})")
        result = train_model(settings, version, profile=profile, arch=arch, overrides=changes)
    typer.echo(f"run {result['run_id']}: {result['arch']} val_accuracy {result['val_accuracy']:.4f} "
               f"in {result['train_seconds']:.0f} s (started from {result['init_used']})")


@app.command("evaluate")
def evaluate(run_id: str = typer.Argument(..., help="MLflow run id of a training run.")) -> None:
    """Log test metrics and evaluation figures into a training run."""
    settings = load_settings()
    with user_errors():
        from ml.evaluate import evaluate_run

        result = evaluate_run(settings, run_id)
    typer.echo(f"test_accuracy {result['test_accuracy']:.4f}")
    for name, recall in result["test_recall"].items():
        typer.echo(f"  recall {name:<22} {recall:.4f}")
