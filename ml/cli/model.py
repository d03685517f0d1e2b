"""`visionloop model` commands: the registry by alias."""

from __future__ import annotations

import typer

from ml.cli.common import load_settings, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """Registered versions, newest first, with aliases and the gate's decision."""
    settings = load_settings()
    with user_errors():
        from ml.stages.gate import list_versions

        rows = list_versions(settings)
    if not rows:
        typer.echo(f"no versions of {settings.model_name} registered yet")
        return
    # test_acc: on the clean test split; corr_acc: on held-out user corrections (both unseen by the champion).
    typer.echo(f"{'version':>7}  {'aliases':<30} {'test_acc':>8} {'corr_acc':>8}  decision")
    for row in rows:
        decision = {"True": "promoted", "False": "rejected"}.get(row["promoted"], "-")
        typer.echo(f"{row['version']:>7}  {','.join(row['aliases']) or '-':<30} {row['test_accuracy'] or '-':>8} "
                   f"{row.get('corrections_accuracy') or '-':>8}  {decision}: {row['reasons']}")


@app.command("promote")
def promote(version: str = typer.Argument(..., help="Registry version to make champion.")) -> None:
    """Make VERSION the champion by hand; the current champion becomes previous_champion."""
    settings = load_settings()
    with user_errors():
        from ml.stages.gate import promote as promote_version

        result = promote_version(settings, version)
    typer.echo(f"champion: v{result['champion']} (previous_champion: v{result['previous_champion']})")


@app.command("rollback")
def rollback() -> None:
    """Put previous_champion back as champion (run it again to undo)."""
    settings = load_settings()
    with user_errors():
        from ml.stages.gate import rollback as rollback_champion

        result = rollback_champion(settings)
    typer.echo(f"rolled back: champion is v{result['champion']}, previous_champion v{result['previous_champion']}")
