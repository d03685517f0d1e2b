"""`visionloop data` commands: build, list and inspect dataset snapshots."""

from __future__ import annotations

import logging
import resource
import time

import typer

from ml.cli.common import load_settings, user_errors

app = typer.Typer(no_args_is_help=True)

BUILD_HELP = """Build (or reuse) the dataset snapshot from the configured sources.

Sources: cifar10, cifar100 (only the superclasses in VISIONLOOP_SUPERCLASSES),
feedback (corrected images from the object store) and folder:<dir|.tar|.tar.gz|.zip>
laid out <class>/<image>. Images that are not 32x32 are centre-cropped to a
square and Lanczos-resampled to 32x32. Classes below VISIONLOOP_CLASS_TARGET
are topped up with rotated copies, in train only. The same inputs give the
same version, and a second build reuses it.
"""


@app.command(help=BUILD_HELP)
def build(
    source: list[str] = typer.Option(None, "--source", "-s",
                                     help="A data source (repeatable); default VISIONLOOP_DATA_SOURCES."),
    profile: bool = typer.Option(False, "--profile", help="Print the time and peak memory of the build."),
) -> None:
    settings = load_settings()
    logging.basicConfig(level=logging.INFO if profile else logging.WARNING, format="%(message)s")
    logging.getLogger("ml.data.summary").propagate = False  # the table is printed below, once
    started = time.perf_counter()
    with user_errors():
        from ml.data.report import summary
        from ml.stages import data, snapshots

        result = data.build(settings, sources=source or None)
        manifest = snapshots.manifest(settings, result["version"])
    typer.echo(summary(manifest))
    state = "reused the existing snapshot" if result["reused"] else "built"
    typer.secho(f"{state}: dataset version {result['version']} ({result['manifest_key']})",
                fg=typer.colors.GREEN)
    if profile:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        typer.echo(f"{time.perf_counter() - started:.1f} s, peak memory {peak_mb:.0f} MB "
                   f"(largest decode worker {workers_mb:.0f} MB)")


@app.command("list")
def list_() -> None:
    """List the snapshots in the object store, newest last."""
    settings = load_settings()
    with user_errors():
        from ml.stages import snapshots

        entries = snapshots.index(settings)
    if not entries:
        typer.echo("no dataset snapshots yet; run `visionloop data build`")
        return
    for entry in entries:
        counts = "  ".join(f"{split} {n:>6}" for split, n in entry["counts"].items())
        typer.echo(f"{entry['version']}  {entry['created_at']}  {counts}")


@app.command()
def show(
    version: str = typer.Argument(None, help="A version from `visionloop data list`; default the newest."),
) -> None:
    """Show one snapshot: counts per class, source and split, sources and what was skipped."""
    settings = load_settings()
    with user_errors():
        from ml.data.report import summary
        from ml.stages import snapshots

        version = version or snapshots.latest_version(settings)
        if version is None:
            raise ValueError("no dataset snapshots yet; run `visionloop data build`")
        manifest = snapshots.manifest(settings, version)
    typer.echo(summary(manifest))
    for source in manifest.get("sources", []):
        typer.echo(f"source {source['name']}: {source['checksum']}")
