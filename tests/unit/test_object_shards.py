"""Memory shards in object storage (``store.object_shards``) on a real S3 server (moto), memory:// and a folder.

Every damage case must raise ``StoreError`` naming the shard URL and the rows: damaged bytes never become numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from clara_plugins.errors import ConfigError, InputError, StoreError
from clara_plugins.quantize import dequantize_rows, quantize_rows
from clara_plugins.store.object_shards import HEADER_SIZE, ObjectShards, RowLocation, ShardHeader, _merge

DIM, GROUP = 256, 64
BACKENDS = ["s3", "memory", "local"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> dict:
    """``{"url", "storage_options"}`` of an empty root on one backend."""
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return {"url": f"{bucket['url']}/mem", "storage_options": bucket["storage_options"]}
    if request.param == "memory":
        return {"url": f"memory://clara-{uuid.uuid4().hex}", "storage_options": None}
    return {"url": str(tmp_path / "shared"), "storage_options": None}


def shards(backend: dict, dtype: str = "float16", **kw) -> ObjectShards:
    return ObjectShards(backend["url"], DIM, dtype, group=GROUP, storage_options=backend["storage_options"], **kw)


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def as_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """What a row reads back as: the dtype's rounding of it."""
    if dtype == "int8":
        return dequantize_rows(*quantize_rows(x, GROUP))
    return x.astype(dtype).astype(np.float32)


def edit(store: ObjectShards, shard: str, change) -> None:
    """Rewrite a shard object's bytes with ``change(bytes) -> bytes`` (damage from outside the store)."""
    path = store._path(shard)
    store.fs.pipe_file(path, change(store.fs.cat_file(path)))


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_round_trip_in_requested_order_from_another_client(backend, dtype):
    writer = shards(backend, dtype)
    a, b = rows(10, 0), rows(7, 1)
    la, lb = writer.write(a), writer.write(b)
    assert len({loc.shard for loc in la} | {loc.shard for loc in lb}) == 2  # one new shard per write
    reader = shards(backend, dtype)  # another client: nothing cached
    asked = [lb[3], la[0], la[9], lb[0], la[0]]
    got = reader.read(asked)
    want = as_stored(np.stack([b[3], a[0], a[9], b[0], a[0]]), dtype)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == (5, DIM)
    assert reader.shards() == sorted({la[0].shard, lb[0].shard})
    assert reader.nbytes() == sum(HEADER_SIZE + n * (writer.row_bytes + 4) for n in (10, 7))
    assert reader.read([]).shape == (0, DIM)


@pytest.mark.parametrize("backend", ["s3", "memory"], indirect=True)
def test_many_rows_from_many_shards_in_order(backend):
    store = shards(backend)
    data = rows(20 * 8, 2)
    locs = [loc for i in range(20) for loc in store.write(data[i * 8 : (i + 1) * 8])]
    order = np.random.default_rng(3).permutation(len(locs))[:100]
    for gap in (None, 1 << 20):  # one request per row, and ranges of a shard merged
        reader = shards(backend, merge_gap=gap)
        np.testing.assert_array_equal(reader.read([locs[i] for i in order]), as_stored(data[order], "float16"))


def test_two_processes_write_one_prefix_at_once(backend, tmp_path):
    """Two writer processes (s3: credentials and endpoint from the environment only) get distinct shards."""
    if backend["url"].startswith("memory://"):
        pytest.skip("memory:// is private to a process")
    env = _s3_env(backend) if backend["url"].startswith("s3://") else {}
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import json, pathlib, sys, time, numpy as np
        from clara_plugins.store.object_shards import ObjectShards
        store = ObjectShards({backend["url"]!r}, {DIM})
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.01)
        seed = int(sys.argv[1])
        locs = [store.write(np.random.default_rng(seed * 100 + i).standard_normal((4, {DIM}))) for i in range(5)]
        print(json.dumps([[loc.shard, loc.row, loc.crc] for batch in locs for loc in batch]))
    """)
    procs = [_spawn(script, str(seed), env) for seed in (1, 2)]
    go.touch()
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    names = [{loc[0] for loc in out} for out in outs]
    assert len(names[0]) == len(names[1]) == 5 and not names[0] & names[1]
    store = shards(backend)
    assert store.shards() == sorted(names[0] | names[1])
    for seed, out in zip((1, 2), outs):
        want = np.concatenate([np.random.default_rng(seed * 100 + i).standard_normal((4, DIM)) for i in range(5)])
        np.testing.assert_array_equal(store.read([RowLocation(*loc) for loc in out]), as_stored(want, "float16"))


def _s3_env(backend: dict) -> dict:
    opts = backend["storage_options"]
    keys = {"AWS_ACCESS_KEY_ID": opts["key"], "AWS_SECRET_ACCESS_KEY": opts["secret"]}
    return {**keys, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": opts["endpoint_url"]}


def _spawn(script: str, arg: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, arg], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True
    )


def test_flipped_byte_names_shard_and_row_and_spares_the_others(backend):
    store = shards(backend)
    locs = store.write(rows(6, 4))
    shard = locs[0].shard
    at = HEADER_SIZE + 2 * store.row_bytes + 17  # a byte of row 2
    edit(store, shard, lambda raw: raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :])
    reader = shards(backend)
    with pytest.raises(StoreError, match=r"(?s)" + store.shard_url(shard) + r".*row\(s\) 2 fail.*clara check"):
        reader.read(locs)
    with pytest.raises(StoreError, match="row"):
        reader.read([locs[2]])
    others = [loc for loc in locs if loc.row != 2]
    np.testing.assert_array_equal(reader.read(others), as_stored(rows(6, 4)[[0, 1, 3, 4, 5]], "float16"))
    assert reader.check_shard(shard) == [2]


def test_truncated_shard(backend):
    store = shards(backend)
    locs = store.write(rows(6, 5))
    shard, url = locs[0].shard, store.shard_url(locs[0].shard)
    edit(store, shard, lambda raw: raw[: HEADER_SIZE + 3 * store.row_bytes + 10])  # cut inside row 3
    reader = shards(backend)
    with pytest.raises(StoreError, match=rf"{url} is truncated: rows 3, 5"):
        reader.read([locs[3], locs[0], locs[5]])
    np.testing.assert_array_equal(reader.read(locs[:3]), as_stored(rows(6, 5)[:3], "float16"))
    with pytest.raises(StoreError, match="truncated"):
        reader.check_shard(shard)
    edit(store, shard, lambda raw: raw[:10])  # cut inside the header: the ranges lie past the end
    with pytest.raises(StoreError, match=rf"{url} is truncated"):
        shards(backend).read([locs[4]])


def test_missing_shard(backend):
    store = shards(backend)
    locs = store.write(rows(3, 6))
    store.fs.rm(store._path(locs[0].shard))
    with pytest.raises(StoreError, match=rf"{store.shard_url(locs[0].shard)} is missing \(rows 1 .*clara check"):
        shards(backend).read([locs[1]])


def test_header_that_disagrees_with_the_store(backend):
    store = shards(backend)
    locs = store.write(rows(4, 7))
    url = store.shard_url(locs[0].shard)
    with pytest.raises(StoreError, match=rf"{url} holds float16 rows of dim {DIM} .* reads float32 rows"):
        shards(backend, "float32").read(locs[:1])
    wrong = ShardHeader("float16", DIM * 2, 0, 4, store.row_bytes).pack()  # a valid header of another width
    edit(store, locs[0].shard, lambda raw: wrong + raw[HEADER_SIZE:])
    with pytest.raises(StoreError, match=rf"{url} holds float16 rows of dim {DIM * 2} .*rows 0"):
        shards(backend).read(locs[:1])
    edit(store, locs[0].shard, lambda raw: raw[:20] + b"\xff" + raw[21:])  # header bytes changed: its CRC fails
    with pytest.raises(StoreError, match=rf"{url} has a damaged header"):
        shards(backend).read(locs[:1])


def test_row_past_the_shard_end_is_refused(backend):
    store = shards(backend)
    loc = store.write(rows(2, 8))[0]
    with pytest.raises(StoreError, match=r"has 2 rows; rows 5 do not exist"):
        shards(backend).read([RowLocation(loc.shard, 5, 0)])


def test_write_refusals_store_nothing(backend):
    store = shards(backend)
    with pytest.raises(InputError, match=r"shape \[N, 256\]"):
        store.write(np.zeros((2, DIM + 1)))
    bad = rows(2, 9)
    bad[1, 3] = np.nan
    with pytest.raises(StoreError, match="not finite"):
        store.write(bad)
    with pytest.raises(StoreError, match="not finite in float16"):
        store.write(np.full((1, DIM), 1e6))  # overflows fp16
    with pytest.raises(StoreError, match="int8"):
        shards(backend, "int8").write(bad)
    assert store.write(np.zeros((0, DIM))) == []
    assert store.shards() == [] and store.nbytes() == 0


def test_blobs(backend):
    store = shards(backend)
    assert store.get_blob("projection.npz") is None
    store.put_blob("projection.npz", b"one")
    store.put_blob("projection.npz", b"two")
    assert shards(backend).get_blob("projection.npz") == b"two"
    assert store.shards() == []  # blobs are not shards
    with pytest.raises(InputError, match="blob name"):
        store.put_blob("../escape", b"x")


def test_arguments_are_checked():
    with pytest.raises(ConfigError, match="dtype must be one of"):
        ObjectShards("memory://x", DIM, "bfloat16")
    with pytest.raises(ConfigError, match="group"):
        ObjectShards("memory://x", DIM, "int8", group=100)


def test_missing_s3fs_names_the_package():
    script = textwrap.dedent("""
        import sys
        sys.modules["s3fs"] = None  # as if s3fs were not installed
        from clara_plugins.errors import StoreError
        from clara_plugins.store.object_shards import ObjectShards
        try:
            ObjectShards("s3://bucket/prefix", 4)
        except StoreError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert "s3://bucket/prefix need s3fs, which is not installed: pip install s3fs" in out


def test_merge_groups_near_ranges_of_a_shard():
    pieces = [(2, 200, 300), (0, 0, 100), (1, 100, 200), (9, 5000, 5100)]
    assert [(s, e, [p[0] for p in m]) for s, e, m in _merge(pieces, 0)] == [(0, 300, [0, 1, 2]), (5000, 5100, [9])]
    assert len(_merge(pieces, None)) == 4
    assert len(_merge(pieces, 10_000)) == 1
