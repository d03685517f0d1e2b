"""Disk full and backpressure: a request is logged whole or refused with SpoolUnavailable, never half-written."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from ml.requestlog import RequestLog, SpoolUnavailable
from ml.requestlog import spool as spool_module
from tests.unit.test_requestlog import FlakyStore, make_record, shipped_records


@pytest.fixture
def store(settings):
    return FlakyStore(settings.store_dir)


def spool_sizes(rlog: RequestLog) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (rlog.dir / "segments").iterdir()}


class FailingWrite:
    """os.write that fails at call number `at`: half the bytes then ENOSPC, or no progress at all."""

    def __init__(self, at: int, mode: str):
        self.at, self.mode, self.calls = at, mode, 0
        self.real = os.write

    def __call__(self, fd: int, data) -> int:
        self.calls += 1
        if self.calls < self.at:
            return self.real(fd, data)
        if self.mode == "zero":
            return 0
        if self.calls == self.at:
            return self.real(fd, bytes(data)[: len(data) // 2])  # a short write: the caller must go on
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("at", [1, 2])  # fail while writing the image, or the envelope line
@pytest.mark.parametrize("mode", ["enospc", "zero"])
def test_disk_full_mid_record_rolls_back_and_later_writes_work(settings, store, monkeypatch, at, mode):
    rlog = RequestLog(settings, store)
    before = make_record()
    rlog.log_request(before, b"first" * 100, "png")
    sizes = spool_sizes(rlog)
    failing = FailingWrite(at, mode)
    monkeypatch.setattr(spool_module.os, "write", failing)
    lost = make_record()
    with pytest.raises(SpoolUnavailable, match="cannot be written") as info:
        rlog.log_request(lost, b"second" * 100, "png")
    assert info.value.retry_after_s >= 1
    assert spool_sizes(rlog) == sizes  # nothing half-written
    assert rlog.backlog() == 1 and rlog.lookup(lost.request_id) is None
    monkeypatch.setattr(spool_module.os, "write", failing.real)
    after = make_record()
    rlog.log_request(after, b"third" * 100, "png")
    assert rlog.flush()
    rows = {r["request_id"]: r for r in shipped_records(store)}
    assert set(rows) == {before.request_id, after.request_id}
    for row in rows.values():
        assert hashlib.sha256(store.get_bytes(row["image_key"])).hexdigest() == row["image_sha256"]
    assert rlog.quarantined == 0  # the rollback left nothing torn behind


def test_a_failing_index_write_undoes_the_spooled_record(settings, store, monkeypatch):
    import sqlite3

    rlog = RequestLog(settings, store)
    rlog.log_request(make_record(), b"kept", "png")
    sizes = spool_sizes(rlog)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rlog.index, "add", full)
    with pytest.raises(SpoolUnavailable, match="index"):
        rlog.log_request(make_record(), b"dropped", "png")
    assert spool_sizes(rlog) == sizes and rlog.backlog() == 1


def test_spool_cap_answers_unavailable_until_the_shipper_catches_up(settings, store):
    settings = settings.with_(request_log_max_spool_mb=4096 / 2**20)  # 4 KiB
    rlog = RequestLog(settings, store)
    store.down = True
    rlog.log_request(make_record(), b"x" * 1500, "png")
    with pytest.raises(SpoolUnavailable, match="VISIONLOOP_REQUEST_LOG_MAX_SPOOL_MB") as info:
        rlog.log_request(make_record(), b"y" * 3000, "png")
    assert info.value.retry_after_s >= 1
    assert rlog.backlog() == 1
    store.down = False
    assert rlog.flush()
    rlog.log_request(make_record(), b"y" * 3000, "png")  # room again once shipped
    assert rlog.flush() and len(shipped_records(store)) == 2
