"""`visionloop train` commands: the training stages, one at a time or chained like the training_pipeline DAG."""

from __future__ import annotations

import logging
import os

import typer

from ml.cli.common import load_settings, user_errors

app = typer.Typer(no_args_is_help=True)


def show_progress() -> None:
    """Stage progress (and Keras' epoch lines) on stderr; MLflow's and TensorFlow's chatter stays quiet."""
    # Every stage downloads the run's model: one progress bar per download buried the stage lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ml").setLevel(logging.INFO)


@app.command("run")
def run(
    dataset: str = typer.Option(None, "--dataset", help="Snapshot version; default: the newest one."),
    profile: str = typer.Option(None, "--profile", help="smoke, standard or full (default: VISIONLOOP_PROFILE)."),
    arch: str = typer.Option(None, "--arch", help="seed_cnn or airnet (default: the profile's)."),
    overrides: list[str] = typer.Option(None, "--set", metavar="FIELD=VALUE",
                                        help="Override a hyperparameter, repeatable: --set width=64 --set epochs=20."),
    init: str = typer.Option(None, "--init", help="scratch, or champion: fine-tune the serving champion "
                                                  "(default: VISIONLOOP_TRAIN_INIT, else champion; scratch when there is none or its classes differ)."),
    register: bool = typer.Option(True, "--register/--no-register",
                                  help="Run the registry gate at the end (default), or stop before it: "
                                       "the run is evaluated and has its bundle but no registered version."),
) -> None:
    """Train, evaluate, fit OOD detectors, build the bundle and reference pack, then gate: the training_pipeline
    DAG's stages in order. The gate registers the model as `challenger` and promotes it to `champion` if it
    is no worse than the current one."""
    settings = load_settings(profile=profile)
    show_progress()
    with user_errors():
        from ml.hparams import parse_overrides
        from ml.stages.chain import run_training

        changes = parse_overrides(overrides) | ({"init": init} if init else {})
        result = run_training(settings, dataset, profile=profile, overrides=changes, register=register, arch=arch)
    typer.echo(f"run {result['run_id']} on dataset {result['dataset_version']}: {result['arch']} "
               f"val_accuracy {result['val_accuracy']:.4f}, test_accuracy {result['test_accuracy']:.4f} "
               f"(trained {result['train_seconds']:.0f} s from {result['init_used']})")
    auroc = result["ood_heldout_auroc"]
    typer.echo(f"OOD: default detector {result['ood_default_detector']}, held-out AUROC "
               + (f"{auroc:.4f}" if auroc is not None else "n/a (no held-out outlier classes)"))
    decision = result["gate"]
    if decision is None:
        typer.echo("not registered (--no-register)")
        return
    verdict = "promoted to champion" if decision["promoted"] else "not promoted (stays challenger)"
    typer.echo(f"v{decision['version']} {verdict}: {'; '.join(decision['reasons'])}")


@app.command("evaluate")
def evaluate(run_id: str = typer.Argument(..., help="MLflow run id of a training run.")) -> None:
    """Log test metrics and evaluation figures into a training run (the evaluate stage alone)."""
    settings = load_settings()
    show_progress()
    with user_errors():
        from ml.stages.evaluate import evaluate as evaluate_stage

        result = evaluate_stage(settings, run_id)
    typer.echo(f"test_accuracy {result['test_accuracy']:.4f}")
    for name, recall in result["test_recall"].items():
        typer.echo(f"  recall {name:<22} {recall:.4f}")
