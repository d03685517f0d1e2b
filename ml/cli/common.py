"""Helpers every CLI group uses: settings from the environment and errors as one clear line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer

from ml.config import ConfigError, Settings
from ml.storage import StorageError


def load_settings(**overrides) -> Settings:
    # MLflow's default of 7 retries with backoff keeps a user waiting minutes when the server is down.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(f"configuration error: {exc}")


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line naming the fix, not a traceback."""
    try:
        yield
    except (ConfigError, StorageError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # MLflow's errors (server down, unknown run or model) are the user's to fix, not bugs;
        # matched by module so the CLI need not import mlflow (3 s) to catch them.
        if type(exc).__module__.startswith("mlflow"):
            fail(f"MLflow ({Settings.from_env().mlflow_tracking_uri}): {exc}; is the server up? "
                 "Check MLFLOW_TRACKING_URI")
        raise
