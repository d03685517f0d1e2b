"""Plain-text tables of a manifest: per-class counts by source and split, and what was skipped."""

from __future__ import annotations

from ml.data.balance import SPLITS


def _short(name: str) -> str:
    """Column title for a source: folder sources by file or directory name."""
    if name.startswith("folder:"):
        return name.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0] or name
    return name


def _table(header: list[str], rows: list[list[object]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[object]) -> str:  # first column left-aligned, numbers right-aligned
        cells = zip(row, widths, strict=True)
        return "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(cells))

    lines = [line(r) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def counts_table(manifest: dict) -> str:
    """One row per class: real images per source, synthetic copies, and the split sizes."""
    sources = list(manifest.get("counts_by_source", {}))
    splits = [s for s in SPLITS if s in manifest["counts"]]  # JSON keys come back sorted
    header = ["class", *(_short(s) for s in sources), "synthetic", *splits, "total"]
    rows = []
    for c in manifest["classes"]:
        per_split = [manifest["counts"][s][c] for s in splits]
        rows.append([c, *(manifest["counts_by_source"][s][c] for s in sources),
                     manifest["synthetic"].get(c, 0), *per_split, sum(per_split)])
    rows.append(["TOTAL", *(sum(col) for col in list(zip(*rows, strict=False))[1:])])
    return _table(header, rows)


def problems_text(manifest: dict) -> str:
    """What did not make it into the snapshot, in a few lines."""
    lines = []
    if manifest.get("skipped"):
        examples = "; ".join(f"{p} ({why})" for p, why in manifest.get("skipped_examples", []))
        lines.append(f"skipped {manifest['skipped']} unreadable or misplaced files, e.g. {examples}")
    if manifest.get("duplicates"):
        lines.append(f"removed {manifest['duplicates']} exact duplicate images")
    if manifest.get("unknown_classes"):
        names = ", ".join(f"{k} ({v})" for k, v in sorted(manifest["unknown_classes"].items()))
        lines.append(f"skipped images of classes that are not configured: {names}")
    lines.extend(manifest.get("notes", []))
    return "\n".join(lines)


def outliers_text(manifest: dict) -> str:
    """One line per outlier source stored with the snapshot (`outliers/`, for OOD fitting only)."""
    entry = manifest.get("outliers") or {}
    lines = [f"outliers: {entry['images']} images of {len(entry['counts'])} classes"] if entry else []
    for source in entry.get("sources", []):
        lines.append(f"  {_short(source['name'])}: {source['images']} images of {len(source['counts'])} classes")
    return "\n".join(lines)


def summary(manifest: dict) -> str:
    """The table, the outliers and the problems, as the CLI and the task log show them."""
    head = f"dataset {manifest['version']} ({manifest.get('created_at', '')})"
    parts = [head, counts_table(manifest), outliers_text(manifest), problems_text(manifest)]
    return "\n".join(p for p in parts if p)
