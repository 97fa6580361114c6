"""WebDataset shards of one tile, written atomically, with an index that training reads instead of pixels.

Shards are written under hidden temporary names and renamed into place when each tar is closed, so a
killed run never leaves a tar that looks complete.
The per-tile ``index.parquet`` is written last: a tile is done exactly when its index exists, and a
re-run first clears leftovers and afterwards removes shards the new index no longer lists.
"""

from __future__ import annotations

import errno
import functools
import io
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xenium_assets.atomic import PARTIAL, atomic_file, write_json
from xenium_assets.layout import ShardMember, TileShardFiles

TILE_BOUNDS = "tile_bounds_um"
"""Index metadata: the tile's [x0, y0, x1, y1] in µm, which the spatial split's buffer is measured from."""
RING_UM = "ring_um"
"""Index metadata: how far the masks' perinuclear ring grows from the nucleus (absent in shards cut before it)."""
MAX_SAMPLES_PER_SHARD = 10_000
MAX_SHARD_BYTES = 1e9


def _tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar member header (regular file, mode 0444, mtime 0: reproducible bytes)."""
    raw = name.encode()
    prefix = b""
    if len(raw) > 100:  # ustar keeps up to 155 more bytes of directories in the prefix field
        prefix, _, raw = raw.rpartition(b"/")
        if len(raw) > 100 or len(prefix) > 155:
            raise ValueError(f"tar member name too long: {name}")
    h = bytearray(512)
    h[0 : len(raw)] = raw
    h[100:108] = b"0000444\x00"
    h[108:124] = b"0000000\x000000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[148:156] = b"        "
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[265:272] = h[297:304] = b"bigdata"
    h[345 : 345 + len(prefix)] = prefix
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


_BLANK = np.frombuffer(_tar_header("", 0), np.uint8).copy()
_BLANK[148:156] = ord(" ")  # a checksum is summed over its own field as spaces
_BLANK_SUM = int(_BLANK.sum())


def tar_headers(names: list[str], sizes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(n, 512) uint8 (into ``out`` if given): ``_tar_header`` of every name and size, built as one array (about
    1 µs a header against 5 µs in Python). Every byte of each header is written, so ``out`` may hold anything.
    The checksum is the blank header's byte sum plus the name's and the size digits' (not a sum over all 512 bytes).
    Names over 100 bytes need the ustar prefix field: those take the scalar path."""
    raw = [n.encode() for n in names]
    out = np.empty((len(raw), 512), dtype=np.uint8) if out is None else out
    if raw and max(map(len, raw)) > 100:
        out[...] = [np.frombuffer(_tar_header(n, int(s)), np.uint8) for n, s in zip(names, sizes, strict=True)]
        return out
    out[...] = _BLANK
    name_bytes = np.array(raw, dtype="S100").view(np.uint8).reshape(len(raw), 100)
    digits = _octal(np.asarray(sizes, dtype=np.int64), 11)
    out[:, :100] = name_bytes
    out[:, 124:135] = digits
    checksum = _BLANK_SUM + name_bytes.sum(axis=1, dtype=np.int64) + digits.sum(axis=1, dtype=np.int64)
    out[:, 148:154] = _octal(checksum - 11 * ord("0"), 6)
    out[:, 154] = 0
    return out


def _octal(values: np.ndarray, digits: int) -> np.ndarray:
    """ASCII octal digits, zero-padded to ``digits``, of each value (one row per value)."""
    shifts = 3 * np.arange(digits - 1, -1, -1)
    return ((values[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def _padded(n: int) -> int:
    return n + (-n % 512)


class TileShardWriter:
    """Samples -> shard-00000.tar, shard-00001.tar, ... in ``folder`` (each at most N samples / bytes).

    Writes plain ustar members itself, a chunk of samples at a time: each sample's arrays and JSON go straight
    into one preallocated buffer that already holds their tar and .npy headers, and a chunk is one write. Per
    3-member sample: webdataset's TarWriter (tarfile underneath) 144 µs, this writer one sample at a time 65 µs,
    a chunk at a time 43 µs, 26 µs of it the kernel taking the bytes (before direct writes). The result is an
    ordinary tar that webdataset and tarfile read.

    The files are written directly to the disk (``open_direct``), by a thread of the writer's own while the next
    chunk is cut: a direct write waits for the disk (about 5 ms for 128 samples), which would idle the CPU.
    """

    def __init__(self, folder: Path, max_count: int = MAX_SAMPLES_PER_SHARD, max_bytes: float = MAX_SHARD_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(f".*{PARTIAL}*"):
            leftover.unlink()
        self.max_count, self.max_bytes = max_count, max_bytes
        self.shards: list[str] = []
        self._count = self._bytes = 0
        # Two chunk buffers in turn: one being filled while the other's bytes are written.
        self._buffers: list[np.ndarray | None] = [None, None]
        self._written: list[Future | None] = [None, None]
        self._turn = 0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        # Owned by the writer thread: the open tar, its name and temporary name, and whether a write has failed.
        self._fd: int | None = None
        self._name, self._tmp = "", Path()
        self._failed = False

    def chunk(self, keys: list[str], jsons: list[bytes], patch_shape: tuple[int, int]) -> SampleChunk:
        """A buffer for the next ``len(keys)`` samples, their JSON in place: fill its ``dapi`` and ``mask``, then
        ``write`` it.

        Two buffers serve every chunk of the writer in turn (a chunk is written before the next is asked for): a
        fresh 4.7 MB buffer per 128 samples was mapped, page-faulted and unmapped each time; reusing one took a
        patch from 8.4 to 2.9 page faults and from 0.11 to 0.02 ms of system time (one process)."""
        self._turn = 1 - self._turn
        self._wait(self._turn)
        chunk = SampleChunk(keys, jsons, patch_shape, self._buffers[self._turn])
        self._buffers[self._turn] = chunk.buffer
        return chunk

    def write(self, chunk: SampleChunk) -> list[str]:
        """Queue the chunk's samples (``key``.dapi.npy, .mask.npy, .json) for writing; returns each one's shard.

        ``chunk`` is the one the last ``chunk`` call gave; an error of its write is raised by a later call."""
        rows = chunk.rows
        shard_of: list[str] = []
        pieces: list[tuple[str | None, int, int]] = []  # (a shard to open first, first row, rows)
        first = 0
        while first < len(rows):
            opening = None
            if not self.shards or self._count >= self.max_count or self._bytes >= self.max_bytes:
                self.shards.append(opening := TileShardFiles(self.folder).shard(len(self.shards)))
                self._count = self._bytes = 0
            # As many samples as the shard takes: up to the count, and up to the one that reaches the bytes.
            reach = int(-(-(self.max_bytes - self._bytes) // rows.shape[1]))
            n = min(len(rows) - first, self.max_count - self._count, max(reach, 1))
            pieces.append((opening, first, n))
            self._count += n
            self._bytes += n * rows.shape[1]
            shard_of += [self.shards[-1]] * n
            first += n
        self._written[self._turn] = self._io.submit(self._in_thread, self._write_pieces, rows, pieces)
        return shard_of

    def close(self) -> list[str]:
        """Finish the writes and publish the last shard; returns the shards written."""
        try:
            self._wait(0)
            self._wait(1)
            self._io.submit(self._in_thread, self._publish).result()
        finally:
            self._io.shutdown()
            if self._fd is not None:  # a failed write's tar: it keeps its temporary name
                os.close(self._fd)
                self._fd = None
        return self.shards

    def _wait(self, turn: int) -> None:
        """Until the last write from buffer ``turn`` is done; raises its error."""
        if self._written[turn] is not None:
            self._written[turn].result()
            self._written[turn] = None

    # The writer thread's side: jobs run in the order they were queued, and none after one has failed.

    def _in_thread(self, job, *args) -> None:
        if self._failed:
            raise RuntimeError(f"{self.folder}: an earlier write failed")
        try:
            job(*args)
        except OSError as error:  # os.write's errors (a full disk, say) name no file
            self._failed = True
            raise OSError(error.errno, error.strerror, str(self._tmp)) from error
        except BaseException:
            self._failed = True
            raise

    def _write_pieces(self, rows: np.ndarray, pieces: list[tuple[str | None, int, int]]) -> None:
        for opening, first, n in pieces:
            if opening is not None:
                self._publish()
                self._name, self._tmp = opening, self.folder / f".{opening}{PARTIAL}{os.getpid()}"
                self._fd = open_direct(self._tmp)
            _write(self._fd, memoryview(rows[first : first + n]).cast("B"))

    def _publish(self) -> None:
        """Close the open tar (with the end-of-archive blocks) and give it its final name."""
        if self._fd is None:
            return
        try:
            _put(self._fd, memoryview(aligned_bytes(1024)).cast("B"))
        finally:
            os.close(self._fd)
            self._fd = None
        os.replace(self._tmp, self.folder / self._name)


def open_direct(path: Path) -> int:
    """A new file to write, opened with O_DIRECT where the system and the filesystem take it (Linux).

    The shards are written once and not read back soon, so the page cache is only a cost: a buffered write copies
    every byte into it (3 GB, 98,943 patches of the 20k² benchmark: 5.0-11.2 s of system CPU on this machine, a VM
    whose host takes back free pages) where a direct write hands the buffer to the disk (0.2-0.3 s, 3.6 s of the
    disk's time; one process, 4 MB writes)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o666)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o666)


def _write(fd: int, data: memoryview) -> None:
    """One chunk of samples into the open tar (a function of its own so a test can kill a run mid-write)."""
    _put(fd, data)


def _put(fd: int, data: memoryview) -> None:
    """All of ``data`` into the file. A direct write needs the buffer's address, its length and the file's offset
    to be multiples of the disk's block (a tar's sizes are multiples of 512 bytes, and chunk buffers come from
    ``aligned_bytes``); where a filesystem wants more, the file falls back to buffered writes."""
    while len(data):
        try:
            written = os.write(fd, data)
        except OSError as error:
            import fcntl  # POSIX only, as O_DIRECT is

            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            direct = getattr(os, "O_DIRECT", 0)
            if error.errno != errno.EINVAL or not flags & direct:
                raise
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~direct)
            continue
        data = data[written:]


def aligned_bytes(n: int, alignment: int = 4096) -> np.ndarray:
    """``n`` zero bytes whose address is a multiple of ``alignment`` (a page: what direct writes need)."""
    raw = np.zeros(n + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + n]


@dataclass(frozen=True)
class _Layout:
    """Where everything sits in a sample's bytes, for one patch shape and JSON slot (see SampleChunk)."""

    width: int
    template: np.ndarray
    """One sample's bytes with its .npy headers in place and zeros elsewhere."""
    members: tuple[tuple[int, str, int | None], ...]
    """Per member (DAPI, mask, JSON): its tar header's offset, name suffix and size (None: the JSON's own)."""
    arrays: tuple[tuple[int, np.dtype], tuple[int, np.dtype]]
    """Offset and dtype of the DAPI and mask pixels."""


@functools.lru_cache(maxsize=8)
def _layout(shape: tuple[int, int], slot: int) -> _Layout:
    h, w = shape
    parts, members, arrays = [], [], []
    at = 0
    for member, dtype in ((ShardMember.DAPI, np.dtype(np.uint16)), (ShardMember.MASK, np.dtype(np.uint8))):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": dtype.str, "fortran_order": False, "shape": (h, w)})
        npy_header = np.frombuffer(buf.getvalue(), np.uint8)
        size = len(npy_header) + h * w * dtype.itemsize
        part = np.zeros(512 + _padded(size), dtype=np.uint8)
        part[512 : 512 + len(npy_header)] = npy_header
        parts.append(part)
        members.append((at, f".{member}", size))
        arrays.append((at + 512 + len(npy_header), dtype))
        at += len(part)
    parts.append(np.zeros(512 + slot, dtype=np.uint8))
    members.append((at, f".{ShardMember.META}", None))
    template = np.concatenate(parts)
    return _Layout(len(template), template, tuple(members), tuple(arrays))


class SampleChunk:
    """The tar bytes of a chunk of samples: per sample, the header and .npy of the DAPI patch (uint16) and of the
    mask (uint8), then the header and bytes of its JSON. ``dapi`` and ``mask`` are views into it, to be filled.

    Every sample takes the same bytes, so the chunk is one contiguous buffer (one write, where a write per
    JSON and array took 20 µs a sample in Python): a JSON shorter than the chunk's longest by a 512-byte tar
    block or more is padded with spaces, which JSON ignores. ``spare``: an earlier chunk's ``buffer`` to reuse if
    it has the same layout; the .npy headers and the zero tar padding stay from the layout's template, and the tar
    headers, arrays and JSON are written in full (2-3 against 5-6 µs a sample with the template tiled afresh).
    """

    def __init__(
        self, keys: list[str], jsons: list[bytes], shape: tuple[int, int], spare: np.ndarray | None = None
    ) -> None:
        n, (h, w) = len(keys), shape
        self.keys = keys
        lengths = np.array([len(j) for j in jsons], dtype=np.int64)
        slot = _padded(int(lengths.max())) if n else 512
        layout = _layout((h, w), slot)
        if spare is None or spare.shape[1] != layout.width or len(spare) < n:
            spare = aligned_bytes(max(n, 1) * layout.width).reshape(-1, layout.width)
            spare[...] = layout.template
        self.buffer, self.rows = spare, spare[:n]
        rows = self.rows
        # A JSON whose tar blocks are fewer than the slot's is padded to fill them.
        sizes = np.where(lengths + (-lengths % 512) == slot, lengths, slot)
        for at, ext, size in layout.members:
            member_sizes = sizes if size is None else np.full(n, size)
            tar_headers([k + ext for k in keys], member_sizes, out=rows[:, at : at + 512])
        self.dapi, self.mask = (
            rows[:, start : start + h * w * dtype.itemsize].view(dtype).reshape(n, h, w)
            for start, dtype in layout.arrays
        )
        text = rows[:, layout.members[2][0] + 512 :]
        text[...] = np.array(jsons, dtype=f"S{slot}").view(np.uint8).reshape(n, slot)
        if (sizes != lengths).any():
            text[(sizes != lengths)[:, None] & (np.arange(slot) >= lengths[:, None])] = ord(" ")


def finish_tile(folder: Path, index: pd.DataFrame, summary: dict, metadata: dict[str, str]) -> None:
    """Write index.parquet (with ``metadata`` in its schema) and summary.json, then drop stale shards."""
    # Column by column, not Table.from_pandas (4.4 against 0.5 ms a tile): the pandas metadata it adds is
    # replaced by ``metadata`` anyway.
    table = pa.table({name: index[name].to_numpy() for name in index.columns})
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    files = TileShardFiles(Path(folder))
    with atomic_file(files.index) as tmp:
        pq.write_table(table, tmp)
    write_json(files.totals, summary)
    listed = set(index["shard"]) if len(index) else set()
    for shard in files.shards():
        if shard.name not in listed:
            shard.unlink()


LEGACY_LABEL_COLUMNS = ("label", "confidence", "label_version")
"""Columns that indexes of earlier versions carried: labels now live in the labels tables only, so they are dropped."""


def read_index(folders: Iterable[Path]) -> pd.DataFrame:
    """Concatenated indexes of tiles (with a ``path`` column pointing at each sample's shard)."""
    frames = []
    for folder in folders:
        path = TileShardFiles(Path(folder)).index
        if path.exists():
            frame = pq.read_table(path).to_pandas().drop(columns=list(LEGACY_LABEL_COLUMNS), errors="ignore")
            frame["path"] = [str(Path(folder) / s) for s in frame["shard"]]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def verify_tile(folder: Path) -> tuple[int, list[str]]:
    """The samples a tile's index lists, and every problem with its shards: unreadable, or holding another number
    of samples than the index says (a shard copied half-way, or replaced)."""
    import tarfile
    from collections import Counter

    index = pd.read_parquet(TileShardFiles(Path(folder)).index, columns=["key", "shard"])
    problems = []
    for shard, n in Counter(index["shard"]).items():
        try:
            with tarfile.open(Path(folder) / shard) as tar:
                found = sum(1 for m in tar if m.name.endswith(f".{ShardMember.META}"))
        except (OSError, tarfile.TarError) as exc:
            problems.append(f"{Path(folder) / shard}: unreadable ({exc})")
            continue
        if found != n:
            problems.append(f"{Path(folder) / shard}: {found} samples, index lists {n}")
    return len(index), problems


def index_metadata(folder: Path) -> dict[str, str]:
    meta = pq.read_schema(TileShardFiles(Path(folder)).index).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def read_patches(rows: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """(DAPI, mask) of the index ``rows`` (columns ``key`` and ``path``), in their order.

    Random access for a handful of patches (the viewer's class gallery): each shard is opened once and
    only the wanted members are read; training streams whole shards with webdataset instead.
    """
    import tarfile

    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path, group in rows.groupby("path", sort=False):
        with tarfile.open(path) as tar:
            for key in group["key"]:
                arrays = [
                    np.load(io.BytesIO(tar.extractfile(f"{key}.{member}").read()))
                    for member in (ShardMember.DAPI, ShardMember.MASK)
                ]
                found[key] = (arrays[0], arrays[1])
    return [found[k] for k in rows["key"]]
