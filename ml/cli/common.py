"""Helpers every CLI group uses: settings from the environment and errors as one clear line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from ml.config import ConfigError, Settings
from ml.storage import StorageError


def load_settings(**overrides) -> Settings:
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
