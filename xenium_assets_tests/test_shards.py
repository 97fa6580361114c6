"""WebDataset shards (patches/shards.py): tar headers, cutting, direct I/O and atomic publication."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from xenium_assets.layout import TileShardFiles
from xenium_assets.patches.extract import extract_tile


def test_tar_headers_equal_the_scalar_ones_and_tarfile_reads_them():
    import io
    import tarfile

    from xenium_assets.patches.shards import _tar_header, tar_headers

    names = ["s/1.dapi.npy", "sample-ü/cell_%d.json", "x" * 100]
    sizes = np.array([0, 1, 8**11 - 1])
    headers = tar_headers(names, sizes)
    assert [h.tobytes() for h in headers] == [_tar_header(n, int(z)) for n, z in zip(names, sizes, strict=True)]
    long = ["d" * 40 + "/" + "f" * 90]  # over 100 bytes: the ustar prefix field, on the scalar path
    assert tar_headers(long, np.array([3]))[0].tobytes() == _tar_header(long[0], 3)
    tar = io.BytesIO(_tar_header(long[0], 3) + b"abc".ljust(512, b"\0") + b"\0" * 1024)
    with tarfile.open(fileobj=tar) as t:
        assert t.getnames() == long and t.extractfile(long[0]).read() == b"abc"


def test_shards_are_cut_by_count_and_by_bytes(tmp_path):
    """Chunks that straddle a shard's limits are split there; samples keep their order across shards. A chunk's
    JSON that ends a tar block short of its longest is padded with spaces; every JSON reads back as written."""
    from xenium_assets.patches.shards import TileShardWriter

    rng = np.random.default_rng(0)
    keys = [f"s/c{i:03d}" for i in range(50)]
    dapi = rng.integers(0, 65535, (50, 8, 8), dtype=np.uint16)
    notes = ["x" * int(n) for n in rng.integers(0, 600, 50)]  # one JSON block or two
    notes[:16] = ["x" * 100] * 16  # the first chunk's JSONs all fit a block: no padding
    one_sample = 3 * 512 + 2 * 512 + 512  # three headers, two padded arrays, a short JSON
    for max_count, max_bytes, per_shard in ((7, 1e9, 7), (1000, 4 * one_sample, 4)):
        folder = tmp_path / f"{max_count}"
        writer = TileShardWriter(folder, max_count=max_count, max_bytes=max_bytes)
        shard_of = []
        for first in range(0, 50, 16):  # chunks of 16 against shards of 7 or 4 samples
            jsons = [json.dumps({"i": i, "note": notes[i]}).encode() for i in range(first, min(first + 16, 50))]
            chunk = writer.chunk(keys[first : first + 16], jsons, (8, 8))
            chunk.dapi[...] = dapi[first : first + 16]
            chunk.mask[...] = 1
            shard_of += writer.write(chunk)
        shards_written = writer.close()
        samples = list(wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False).decode())
        assert [s["__key__"] for s in samples] == keys
        assert [s["json"] for s in samples] == [{"i": i, "note": n} for i, n in enumerate(notes)]
        np.testing.assert_array_equal(np.stack([s["dapi.npy"] for s in samples]), dapi)
        # By bytes: 4 one-block-JSON samples fill a shard; of samples with two-block JSON, the 4th crosses the limit.
        assert len(shards_written) == -(-50 // per_shard) and shard_of == [
            shards_written[i // per_shard] for i in range(50)
        ]
        texts = {}
        for shard in shards_written:
            with tarfile.open(folder / shard) as tar:
                texts |= {m.name: tar.extractfile(m).read() for m in tar if m.name.endswith(".json")}
        assert texts[f"{keys[0]}.json"] == json.dumps({"i": 0, "note": notes[0]}).encode()  # nothing to pad
        assert any(text.endswith(b" ") for text in texts.values())  # padded ones, which still decoded above


def test_reused_chunk_buffers_write_the_same_headers_as_fresh_ones(tmp_path):
    """A writer reuses a chunk's buffer for the next; after a chunk of names too long for ustar's name field (the
    prefix field then holds their folders), short names must not inherit them."""
    from xenium_assets.patches.shards import TileShardWriter, _tar_header

    writer = TileShardWriter(tmp_path)
    keys = [["s/a", "s/b"], ["x" * 60 + "/" + "y" * 45, "s/c"], ["s/d", "s/e"], ["t/f", "t/g"]]
    for chunk_keys in keys:
        chunk = writer.chunk(chunk_keys, [json.dumps({"k": k}).encode() for k in chunk_keys], (4, 4))
        chunk.dapi[...], chunk.mask[...] = 7, 1
        writer.write(chunk)
    (shard,) = writer.close()
    with tarfile.open(tmp_path / shard) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            f"{k}.{e}" for ks in keys for k in ks for e in ("dapi.npy", "mask.npy", "json")
        ]
        raw = (tmp_path / shard).read_bytes()
        for m in members:
            assert raw[m.offset : m.offset + 512] == _tar_header(m.name, m.size)
            if m.name.endswith(".json"):
                assert json.loads(tar.extractfile(m).read()) == {"k": m.name[: -len(".json")]}


def _write_two_chunks(folder: Path, monkeypatch) -> tuple[bytes, list[int]]:
    """The bytes of a one-shard tile of two chunks, and the open tar's file flags at each chunk's write."""
    import fcntl

    from xenium_assets.patches import shards

    flags, write = [], shards._write

    def recording(fd, data):
        flags.append(fcntl.fcntl(fd, fcntl.F_GETFL))
        write(fd, data)

    monkeypatch.setattr(shards, "_write", recording)
    writer = shards.TileShardWriter(folder)
    for first in (0, 3):
        keys = [f"s/c{i}" for i in range(first, first + 3)]
        chunk = writer.chunk(keys, [json.dumps({"k": k}).encode() for k in keys], (16, 16))
        chunk.dapi[...] = np.arange(256, dtype=np.uint16).reshape(16, 16) + first
        chunk.mask[...] = first
        writer.write(chunk)
    (shard,) = writer.close()
    monkeypatch.setattr(shards, "_write", write)
    return (folder / shard).read_bytes(), flags


@pytest.mark.skipif(not hasattr(__import__("os"), "O_DIRECT"), reason="O_DIRECT is Linux's")
def test_shards_bypass_the_page_cache_and_fall_back_to_plain_writes_of_the_same_bytes(tmp_path, monkeypatch):
    """Direct writes on a disk filesystem; for a buffer direct I/O refuses (not block-aligned: as on a filesystem
    with larger blocks), plain writes of the same bytes."""
    import os

    from xenium_assets.patches import shards

    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip(f"{tmp_path}'s filesystem refuses O_DIRECT")
    direct, flags = _write_two_chunks(tmp_path / "disk", monkeypatch)
    assert len(flags) == 2 and all(f & os.O_DIRECT for f in flags)
    samples = list(wds.WebDataset(str(next((tmp_path / "disk").glob("shard-*.tar"))), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"s/c{i}" for i in range(6)]
    np.testing.assert_array_equal(samples[4]["dapi.npy"], np.arange(256).reshape(16, 16) + 3)

    def unaligned(n: int, alignment: int = 4096) -> np.ndarray:
        return np.zeros(n + 1, dtype=np.uint8)[1:]  # one byte off any block: direct I/O refuses it (EINVAL)

    monkeypatch.setattr(shards, "aligned_bytes", unaligned)
    fallen_back, flags = _write_two_chunks(tmp_path / "unaligned", monkeypatch)
    assert flags[0] & os.O_DIRECT and not flags[1] & os.O_DIRECT and fallen_back == direct


def test_a_failed_shard_write_is_raised_with_its_file_and_publishes_nothing(tmp_path, monkeypatch):
    """The writer thread's error (here a full disk on the second chunk) reaches the caller with the tar's name, and
    no later write runs: the tar keeps its temporary name."""
    import errno
    import os

    from xenium_assets.patches import shards

    calls, write = [], shards._write

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(fd, data)

    monkeypatch.setattr(shards, "_write", full_disk)
    writer = shards.TileShardWriter(tmp_path)
    with pytest.raises(OSError, match=r"No space left on device: '.*/\.shard-00000\.tar\.partial-"):
        try:  # as extract_tile does
            for first in range(0, 12, 3):
                keys = [f"s/c{i}" for i in range(first, first + 3)]
                chunk = writer.chunk(keys, [b"{}"] * 3, (4, 4))
                chunk.dapi[...], chunk.mask[...] = 1, 1
                writer.write(chunk)
        finally:
            writer.close()
    assert len(calls) == 2 and writer._fd is None
    assert not list(tmp_path.glob("shard-*.tar")) and list(tmp_path.glob(".shard-*"))


KILLER = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from xenium_assets.patches import shards
    from xenium_assets.patches.extract import extract_tile
    task = pickle.load(open(sys.argv[1], "rb"))
    original, calls = shards._write, []
    def write(fd, data):
        calls.append(1)
        if len(calls) == 3:  # the third shard's samples: write half of their bytes, then die
            original(fd, data[: len(data) // 1024 * 512])
            os.kill(os.getpid(), signal.SIGKILL)  # mid-tile, mid-shard: no cleanup code runs
        original(fd, data)
    shards._write = write
    extract_tile(task)
    """
)


def test_killed_worker_leaves_no_half_written_shard(extracted, tmp_path):
    import dataclasses
    import pickle

    _, root, manifest, store, tasks, _ = extracted
    task = max(tasks, key=lambda t: len(t.cells))
    task = dataclasses.replace(task, out_dir=str(tmp_path / task.tile), max_per_shard=2)
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(task))
    (tmp_path / "killer.py").write_text(KILLER)
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(tmp_path / "task.pkl")], timeout=120)
    assert proc.returncode == -9
    folder = Path(task.out_dir)
    published = sorted(folder.glob("shard-*.tar"))
    assert len(published) == 2 and not TileShardFiles(folder).index.exists()
    for shard in published:  # what carries a final name is complete
        assert len(list(wds.WebDataset(str(shard), shardshuffle=False))) == 2
    assert list(folder.glob(".shard-*"))  # the interrupted tar kept its temporary name
    extract_tile(task)
    assert not list(folder.glob(".shard-*"))
    index = pq.read_table(TileShardFiles(folder).index).to_pandas()
    assert len(index) == len(task.cells) and len(list(folder.glob("shard-*.tar"))) == -(-len(task.cells) // 2)
    keys = [
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False)
    ]
    assert keys == list(index["key"])
