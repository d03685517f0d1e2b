"""bench/closed_loop.py's new-photo-source row: a folder of <class>/<file> photos split into
a corrected stream and a held-out half that stays held out whatever the folder gains."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from closed_loop_data import shifted, source_pools  # noqa: E402

CLASSES = ["cat", "dog", "ship"]


def photo(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_source(folder: Path, per_class: int, start: int = 0) -> None:
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            (folder / name / f"{i}.jpg").write_bytes(photo(1000 * c + i))


def test_pools_are_disjoint_and_the_heldout_half_is_stable(tmp_path):
    write_source(tmp_path, 20)
    stream, heldout = source_pools(tmp_path, CLASSES)
    assert len(stream) + len(heldout) == 60 and stream and heldout
    assert not {data for data, _ in stream} & {data for data, _ in heldout}
    assert {label for _, label in stream + heldout} == set(CLASSES)

    write_source(tmp_path, 20, start=20)
    _, heldout_later = source_pools(tmp_path, CLASSES)
    assert {data for data, _ in heldout} <= {data for data, _ in heldout_later}


def test_photos_are_sent_as_the_source_made_them(tmp_path):
    data = photo(7)
    assert shifted(data, "new_source", seed=0) == data


def test_a_folder_that_is_not_a_class_is_refused_by_name(tmp_path):
    write_source(tmp_path, 2)
    (tmp_path / "giraffe").mkdir()
    with pytest.raises(ValueError, match="giraffe"):
        source_pools(tmp_path, CLASSES)
