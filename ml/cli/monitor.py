"""`visionloop monitor` commands."""

from __future__ import annotations

import json

import typer

from ml.cli.common import load_settings, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run(
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Compute without logging a run to MLflow."),
    decide: bool = typer.Option(True, "--decide/--no-decide", help="Also run the retrain trigger."),
) -> None:
    """Test the requests logged since the watermark for drift, log the window, and decide on retraining."""
    from ml.stages.drift import decide_retrain, run_window

    settings = load_settings()
    with user_errors():
        result = run_window(settings, log_to_mlflow=not no_mlflow)
        typer.echo(f"window {result['window_id']}: {result['verdict']} over {result['n_records']} requests "
                   f"(model version {result['model_version']})")
        for version, n in result.get("skipped_versions", {}).items():
            typer.echo(f"  skipped {n} requests of model version {version}: it has no reference pack")
        for signal in result["signals"]:
            flag = "DRIFT" if signal["drift"] else ""
            typer.echo(f"  {signal['name']:<22} stat={signal['statistic']:.4g} p={signal['p_value']:.3g} {flag}")
        if decide:
            decision = decide_retrain(settings, result)
            typer.echo(f"retrain: {decision['retrain']} ({decision['reason']})")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Show the watermark, the last drift windows and the last retrain trigger."""
    from ml import layout
    from ml.monitoring.window import Watermark
    from ml.stages.drift import retrain_state
    from ml.storage import open_store

    settings = load_settings()
    with user_errors():
        store = open_store(settings)
        watermark = Watermark.load(store)
        window_keys = list(store.list(f"{layout.MONITORING}windows/"))[-5:]
        windows = [store.get_json(key) for key in window_keys]
        info = {"watermark": {"last_key": watermark.last_key, "updated_at": watermark.updated_at,
                              "pending_batches": len(watermark.pending(store))},
                "windows": [{k: w.get(k) for k in ("window_id", "verdict", "n_records", "model_version", "n_skipped")}
                            for w in windows],
                "retrain": retrain_state(settings)}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    mark = info["watermark"]
    typer.echo(f"watermark: {mark['last_key'] or '(none)'} (updated {mark['updated_at']}), "
               f"{mark['pending_batches']} batches pending")
    for w in info["windows"]:
        skipped = f", {w['n_skipped']} skipped: no reference pack" if w.get("n_skipped") else ""
        typer.echo(f"  {w['window_id']}: {w['verdict']} over {w['n_records']} requests (v{w['model_version']}{skipped})")
    retrain = info["retrain"]
    typer.echo(f"last retrain trigger: {retrain.get('last_trigger_at', 'never')} {retrain.get('reason', '')}")
