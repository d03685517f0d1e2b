"""Decode + resample a stream of encoded images to 32x32 uint8, on several processes.

The reader (tar/zip/directory walk) stays in the calling process and hands
chunks of raw bytes to workers; only uint8 arrays come back, so no PIL image
outlives its chunk and memory stays flat however many images stream through.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice

import numpy as np

from ml.data.base import Loaded, empty_images
from ml.imaging import IMAGE_SIZE, ImageDecodeError, ImageTooLarge, decode_image, to_model_input

CHUNK = 256  # images per task: big enough to amortise pickling, small enough to keep both cores busy
Item = tuple[str, int, bytes]  # (path for reports, class id, encoded bytes)


def default_workers() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def decode_chunk(payloads: list[bytes]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decoded images of the readable payloads, and (position, reason) of the others."""
    out = np.empty((len(payloads), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    ok = np.ones(len(payloads), dtype=bool)
    bad: list[tuple[int, str]] = []
    for i, data in enumerate(payloads):
        try:
            out[i] = to_model_input(decode_image(data))
        except (ImageDecodeError, ImageTooLarge) as exc:
            ok[i] = False
            bad.append((i, str(exc)))
    return out[ok], bad


def _chunks(items: Iterable[Item]) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


def decode_items(items: Iterable[Item], workers: int = 1, total: int | None = None,
                 desc: str = "decode") -> Loaded:
    """Decode every item in order; unreadable ones are reported in Loaded.skipped, not raised."""
    from tqdm import tqdm

    xs, ys, out = [empty_images()], [np.zeros(0, dtype=np.int64)], Loaded()
    with tqdm(total=total, unit="img", desc=desc, disable=None, mininterval=1.0) as bar:
        for chunk, (x, bad) in _map_ordered(_chunks(items), workers):
            failed = {i for i, _ in bad}
            out.skipped.extend((chunk[i][0], reason) for i, reason in bad)
            xs.append(x)
            ys.append(np.array([label for i, (_, label, _) in enumerate(chunk) if i not in failed],
                               dtype=np.int64))
            bar.update(len(chunk))
    out.x, out.y = np.concatenate(xs), np.concatenate(ys)
    return out


def _map_ordered(chunks: Iterator[list[Item]],
                 workers: int) -> Iterator[tuple[list[Item], tuple[np.ndarray, list[tuple[int, str]]]]]:
    """Yield (chunk, decode_chunk result) in input order; at most a few chunks in flight."""
    # A daemon process (e.g. a task in a Celery prefork worker) may not start children.
    if workers <= 1 or multiprocessing.current_process().daemon:
        for chunk in chunks:
            yield chunk, decode_chunk([data for _, _, data in chunk])
        return
    # fork: starts in milliseconds and, unlike spawn/forkserver, never re-imports the caller's
    # __main__ (scripts without a main guard, Airflow task runners). Workers only run PIL + numpy.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pending: deque[tuple[list[Item], Future]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for chunk in chunks:
            # Send only the bytes; paths and labels stay here for the report.
            pending.append((chunk, pool.submit(decode_chunk, [data for _, _, data in chunk])))
            if len(pending) >= 3 * workers:  # back-pressure: bounded memory, busy workers
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
