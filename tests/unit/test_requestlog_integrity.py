"""The spool never mixes up bytes, never wedges on bad files and has one writer per directory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from ml import layout
from ml.records import FeedbackRecord
from ml.requestlog import RequestLog, SpoolLocked
from ml.storage import StorageUnavailable
from tests.unit.test_requestlog import FlakyStore, make_record, shipped_records


@pytest.fixture
def store(settings):
    return FlakyStore(settings.store_dir)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_shipped_byte_identical(store, expected: dict[str, bytes]) -> None:
    """Every expected request is in the store exactly once, with its own bytes and hash."""
    rows = shipped_records(store)
    assert sorted(r["request_id"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["image_sha256"] == sha(expected[row["request_id"]])
        assert store.get_bytes(row["image_key"]) == expected[row["request_id"]]


@pytest.mark.parametrize("restart", [False, True])
def test_feedback_after_a_drain_gets_its_own_image_not_a_later_one(settings, store, restart):
    rlog = RequestLog(settings, store)
    small, large = b"A-small-image", b"B" * 5000
    a = make_record()
    rlog.log_request(a, small, "png")
    assert rlog.flush()  # backlog 0: every segment shipped and removed
    if restart:
        rlog.stop()
        rlog = RequestLog(settings, store)
    b = make_record()
    rlog.log_request(b, large, "png")  # before the fix this reused segment 0 at offset 0
    rlog.log_feedback(a.request_id, "dog")
    assert rlog.flush()
    stored = FeedbackRecord.from_json(store.get_bytes(layout.feedback_record(a.request_id)))
    assert store.get_bytes(stored.image_key) == small
    assert stored.image_sha256 == sha(small)
    assert_shipped_byte_identical(store, {a.request_id: small, b.request_id: large})


def test_record_hash_is_always_of_the_spooled_bytes(settings, store):
    rlog = RequestLog(settings, store)
    rec = make_record()
    rec.image_sha256 = "0" * 64  # a caller's wrong hash must not reach the store
    rlog.log_request(rec, b"the-real-bytes", "jpeg")
    assert rlog.flush()
    assert_shipped_byte_identical(store, {rec.request_id: b"the-real-bytes"})


def _spool_with_damage(settings, store) -> tuple[dict[str, bytes], int]:
    """One sealed batch, one open segment; then tear and litter the spool like a power loss would."""
    store.down = True
    rlog = RequestLog(settings.with_(request_log_batch=2), store)
    recs = [make_record() for _ in range(4)]
    blobs = [f"image-{i}".encode() * 50 for i in range(4)]
    for rec, blob in zip(recs[:2], blobs[:2], strict=True):
        rlog.log_request(rec, blob, "png")
    with pytest.raises(StorageUnavailable):
        rlog.flush()  # sealed on disk, not shipped
    for rec, blob in zip(recs[2:], blobs[2:], strict=True):
        rlog.log_request(rec, blob, "png")
    open_seq = rlog.writer.current
    rlog.stop()
    spool = rlog.dir
    seg = spool / "segments" / f"{open_seq:012d}"
    with open(seg.with_suffix(".bin"), "r+b") as handle:  # the last image lost its tail
        handle.truncate(handle.seek(0, 2) - 3)
    with open(seg.with_suffix(".jsonl"), "ab") as handle:
        handle.write(b"[1,2,3]\n" + b'{"kind":"request","ext":"png","rec')  # non-object, then torn
    (spool / "segments" / "notes.jsonl").write_text("stray")
    (spool / "segments" / "000000000077.bin").write_bytes(b"orphan bytes")
    (spool / "sealed" / "foo.json").write_text("{}")
    (spool / "sealed" / "0000000000001-000000000099-x.done").write_text("not json")
    (spool / "sealed" / "0000000000002-000000000098-abc.json").write_text("{torn")
    (spool / "index.sqlite").write_bytes(b"this is not a database" * 200)
    for suffix in ("-wal", "-shm"):
        (spool / f"index.sqlite{suffix}").unlink(missing_ok=True)
    store.down = False
    expected = {rec.request_id: blob for rec, blob in zip(recs[:3], blobs[:3], strict=True)}
    return expected, recs[3].request_id


def test_damaged_spool_starts_ships_the_good_and_quarantines_the_bad(settings, store):
    expected, torn_id = _spool_with_damage(settings, store)
    rlog = RequestLog(settings.with_(request_log_batch=2), store)  # startup must not fail
    assert rlog.lookup(torn_id) is None  # its bytes are not all there: never indexed
    assert rlog.flush()
    assert_shipped_byte_identical(store, expected)
    quarantine = sorted(p.name for p in (rlog.dir / "quarantine").iterdir())
    assert any(name.endswith("-foo.json") for name in quarantine)
    assert any(name.endswith("-notes.jsonl") for name in quarantine)
    assert any(name.endswith("-abc.json") for name in quarantine)
    assert any(name.endswith("-index.sqlite") for name in quarantine)
    records = [p for p in (rlog.dir / "quarantine").glob("*-records.jsonl")]
    assert len(records) == 1 and len(records[0].read_bytes().splitlines()) == 3  # torn image, [1,2,3], torn line
    assert rlog.quarantined >= 7
    assert rlog.flush() and rlog.backlog() == 0
    assert len(shipped_records(store)) == 3  # nothing shipped twice
    rlog.stop()
    again = RequestLog(settings, store)  # the cleaned spool starts clean
    assert again.backlog() == 0 and again.quarantined == 0
    assert again.lookup(next(iter(expected)))["sha256"] == sha(next(iter(expected.values())))


def test_a_tampered_batch_is_quarantined_and_the_next_still_ships(settings, store):
    rlog = RequestLog(settings.with_(request_log_batch=1, request_log_interval_s=0.1), store)
    store.down = True
    bad, good = make_record(), make_record()
    rlog.log_request(bad, b"will-be-flipped", "png")
    with pytest.raises(StorageUnavailable):
        rlog.flush()
    segment = next((rlog.dir / "segments").glob("*.bin"))
    segment.write_bytes(b"X" + segment.read_bytes()[1:])  # same length, other bytes
    store.down = False
    rlog.log_request(good, b"fine", "png")
    rlog.start()
    try:
        assert rlog.flush(10)
        assert rlog.store_ok  # the store was fine all along
        assert rlog.quarantined == 1
        assert_shipped_byte_identical(store, {good.request_id: b"fine"})
    finally:
        rlog.stop()


def test_second_writer_on_one_spool_is_refused_naming_the_setting(settings, store, tmp_path):
    first = RequestLog(settings, store, spool_dir=tmp_path / "spool")
    with pytest.raises(SpoolLocked, match="VISIONLOOP_SPOOL_DIR") as info:
        RequestLog(settings, store, spool_dir=tmp_path / "spool")
    assert str(tmp_path / "spool") in str(info.value)
    code = ("import sys; from pathlib import Path; from ml.config import Settings\n"
            "from ml.requestlog import RequestLog, SpoolLocked\n"
            f"try: RequestLog(Settings.from_env(home=Path({str(settings.home)!r})), spool_dir={str(tmp_path / 'spool')!r})\n"
            "except SpoolLocked as exc: print(exc); sys.exit(3)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, other.stderr
    assert f"pid {os.getpid()}" in other.stdout
    first.stop()
    RequestLog(settings, store, spool_dir=tmp_path / "spool").stop()  # released with the owner


def test_pointers_live_outside_requests_prefix(settings, store):
    rlog = RequestLog(settings, store)
    rec = make_record(label="ship", version="4")
    rlog.log_request(rec, b"pointer-image", "webp")
    assert rlog.flush()
    pointer = json.loads(store.get_bytes(layout.request_pointer(rec.request_id)))
    assert pointer["image_sha256"] == sha(b"pointer-image")
    assert (pointer["label"], pointer["model_version"], pointer["ext"]) == ("ship", "4", "webp")
    assert store.get_bytes(pointer["image_key"]) == b"pointer-image"
    assert not [k for k in store.list(layout.REQUESTS) if "request-ids" in k]


def test_a_spool_from_before_hashes_upgrades_in_place(settings, store):
    """Old index (no sha column), old segment numbering, no counter file: starts, ships, never reuses numbers."""
    import sqlite3

    spool = settings.home / "spool"
    (spool / "segments").mkdir(parents=True)
    old = sqlite3.connect(spool / "index.sqlite")
    old.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY, segment INTEGER, offset INTEGER, "
                "length INTEGER, ext TEXT, image_key TEXT, label TEXT, model_version TEXT)")
    shipped = make_record(label="dog")
    shipped_key = layout.request_image(datetime.now(UTC), shipped.request_id, "png")
    store.put_bytes(shipped_key, b"shipped-long-ago")
    old.execute("INSERT INTO requests VALUES (?, 5, 0, 16, 'png', ?, 'dog', '3')", (shipped.request_id, shipped_key))
    old.commit()
    old.close()
    pending = make_record()
    record = json.loads(pending.to_json())
    record["image_sha256"] = ""  # very old writers left it empty
    line = json.dumps({"kind": "request", "ext": "png", "record": record, "blob": [0, 7]}) + "\n"
    (spool / "segments" / "000000000002.jsonl").write_text(line)
    (spool / "segments" / "000000000002.bin").write_bytes(b"pending")
    rlog = RequestLog(settings, store)
    assert rlog.backlog() == 1
    rlog.log_feedback(shipped.request_id, "cat")
    rlog.log_request(make_record(), b"new", "png")
    assert min(rlog.writer.segments) == 2 and rlog.writer.current > 5  # above every number the index used
    assert rlog.flush() and rlog.quarantined == 0
    assert len(shipped_records(store)) == 2
    fb = FeedbackRecord.from_json(store.get_bytes(layout.feedback_record(shipped.request_id)))
    assert store.get_bytes(fb.image_key) == b"shipped-long-ago"
