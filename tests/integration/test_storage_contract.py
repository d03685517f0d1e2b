"""One contract, two stores: the local directory and MinIO's client against a real S3 server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from ml.storage import LocalStore, MinioStore, ObjectNotFound, StorageUnavailable, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    moto = request.getfixturevalue("moto_s3")
    moto.reset()
    return MinioStore(moto.endpoint, "testing", "testing", "contract")


def test_bytes_round_trip_and_overwrite(store):
    store.put_bytes("a/b/c.bin", b"first")
    store.put_bytes("a/b/c.bin", b"second")
    assert store.get_bytes("a/b/c.bin") == b"second"
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")


def test_missing_object_raises_not_found_naming_the_key(store):
    with pytest.raises(ObjectNotFound, match="nothing/here"):
        store.get_bytes("nothing/here")


def test_arrays_keep_dtype_shape_and_values(store):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    store.put_array("datasets/v1/train/x.npy", images)
    back = store.get_array("datasets/v1/train/x.npy")
    assert back.dtype == np.uint8 and back.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(back, images)


def test_json_round_trip(store):
    store.put_json("datasets/v1/manifest.json", {"version": "v1", "counts": {"cat": 3}})
    assert store.get_json("datasets/v1/manifest.json")["counts"] == {"cat": 3}


def test_list_is_sorted_filtered_by_prefix_and_resumable(store):
    keys = [f"requests/2026/11/25/0{h}/{i:03d}.jsonl" for h in range(3) for i in range(4)]
    for key in reversed(keys):
        store.put_bytes(key, b"{}")
    store.put_bytes("feedback/x.json", b"{}")
    assert list(store.list("requests/")) == sorted(keys)
    assert list(store.list("requests/2026/11/25/01/")) == sorted(k for k in keys if "/01/" in k)
    assert list(store.list("requests/", start_after=keys[5])) == sorted(keys)[6:]
    assert list(store.list("nothing/")) == []


def test_delete(store):
    store.put_bytes("tmp/x", b"1")
    store.delete("tmp/x")
    assert not store.exists("tmp/x")


def test_url_serves_the_object(store):
    store.put_bytes("feedback/images/r1.png", b"PNGDATA")
    url = store.url("feedback/images/r1.png")
    if url.startswith("file://"):
        assert open(url[len("file://"):], "rb").read() == b"PNGDATA"
    else:
        assert httpx.get(url, timeout=10).content == b"PNGDATA"


def test_files_round_trip(store, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 100_000)
    store.put_file("big/file.bin", source)
    out = store.get_file("big/file.bin", tmp_path / "out" / "file.bin")
    assert out.read_bytes() == source.read_bytes()


def test_uri_names_the_store(store):
    assert store.uri("datasets/v1/manifest.json").endswith("datasets/v1/manifest.json")


def test_put_many_writes_every_object_byte_identical(store):
    objects = [(f"requests/x/{i:03d}.png", bytes([i]) * (i + 1), "image/png") for i in range(40)]
    store.put_bytes("requests/x/005.png", b"older")
    store.put_many(objects)
    assert sorted(store.list("requests/x/")) == [key for key, _, _ in objects]
    assert all(store.get_bytes(key) == data for key, data, _ in objects)


def test_local_put_many_that_fails_leaves_no_object_and_no_temp_file(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k/blocker", b"a file where a folder is needed")
    with pytest.raises(StorageUnavailable):
        store.put_many([("k/a", b"1", "x"), ("k/blocker/b", b"2", "x")])
    assert [p.name for p in (tmp_path / "s" / "k").iterdir()] == ["blocker"]


def test_local_writes_leave_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    for i in range(20):
        store.put_bytes("k/obj", str(i).encode())
    assert [p.name for p in (tmp_path / "s" / "k").iterdir()] == ["obj"]


def test_unreachable_s3_names_the_setting_to_fix():
    store = MinioStore("127.0.0.1:9", "a", "b", "bucket", timeout_s=1)
    with pytest.raises(StorageUnavailable, match="VISIONLOOP_S3_ENDPOINT"):
        store.check()



def test_unwritable_local_store_names_the_setting(tmp_path):
    # A path below a regular file cannot be created, even by root.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageUnavailable, match="VISIONLOOP_HOME"):
        LocalStore(blocker / "store").check()
    with pytest.raises(StorageUnavailable, match="VISIONLOOP_LOCAL_STORE"):
        LocalStore(blocker / "store").put_bytes("k", b"v")


def test_open_store_picks_the_backend(settings, moto_s3):
    assert isinstance(open_store(settings), LocalStore)
    s3 = settings.with_(s3_endpoint=moto_s3.endpoint)
    assert isinstance(open_store(s3), MinioStore)
