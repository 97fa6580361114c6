"""The one place data enters training: WebDataset shards streamed into tensors, labels joined by key.

Shards hold pixels, masks and provenance only; a cell's label comes from the labels table of the
chosen reference version, by its key (``sample/cell_id``), so relabelling never re-cuts a shard and
cells without a usable label are simply not drawn. Nothing loads a whole dataset: shards are read in
order (test) or shuffled shard-wise with a sample shuffle buffer (train), decoded per sample,
normalised with the sample's robust DAPI percentiles (recorded when the shards were made), augmented
the way microscopy allows (90° rotations and flips, small intensity and gamma jitter, noise, optional
blur; masks move with the image), and batched.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import webdataset as wds

from xenium_assets.layout import ShardFiles, ShardMember, TileShardFiles
from xenium_assets.patches.masks import (
    CHANNELS,
    DEFAULT_REPRESENTATION,
    NEEDS_RING,
    Representation,
)
from xenium_assets.patches.shards import RING_UM, TILE_BOUNDS, index_metadata, read_index
from xenium_assets.training.tensors import resize, to_input

LOW, HIGH = "p1", "p99.9"


@dataclass(frozen=True)
class DataConfig:
    input_px: int = 64
    """Patches are resized to this side (96 px at 0.2125 µm/px; 64 trains about 3x faster on a CPU)."""
    representation: Representation = DEFAULT_REPRESENTATION
    """DAPI, the nucleus and the ring grown from it: what a DAPI-only image reproduces once its nuclei are segmented.
    ``dapi_masks`` reads the Xenium cell boundary instead of the ring, ``masked_dapi`` the Xenium cell alone."""
    batch_size: int = 64
    num_workers: int | None = None
    """Loader processes; None: the CPUs beyond two, at most 4 (see ``loader_workers``)."""
    shuffle_buffer: int = 2000
    augment: bool = True
    blur: bool = False
    balance: Literal["weighted_loss", "undersample", "none"] = "weighted_loss"


def loader_workers(requested: int | None) -> int:
    """Loader processes to use: ``requested``, or by default the CPUs beyond the two that training uses.

    On 2 CPUs loader processes only compete with the training threads: an epoch of the demo took 7.7 s
    with 2 workers and 5.5 s with none (the main process decodes and augments a patch in 1.7 ms).
    """
    if requested is not None:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cpus - 2))


class ShardFormatError(ValueError):
    """Shards written by an older version lack what training needs now."""


BOUNDS = ("tile_x0", "tile_y0", "tile_x1", "tile_y1")


def _tile_metadata(folder: Path) -> tuple[list[float], float, dict, float, float]:
    """A tile's bounds in µm, its patch side in µm, its sample's DAPI percentiles, its masks' ring in µm (NaN:
    cut before masks held one) and its pixel size, from its index metadata."""
    meta = index_metadata(folder)
    missing = [k for k in (TILE_BOUNDS, "patch_um", "dapi_percentiles") if k not in meta]
    percentiles = json.loads(meta.get("dapi_percentiles", "{}"))
    missing += [f"dapi_percentiles {k}" for k in (LOW, HIGH) if k not in percentiles and "dapi_percentiles" in meta]
    if missing:
        raise ShardFormatError(
            f"{TileShardFiles(Path(folder)).index} lacks {', '.join(missing)}: "
            "re-materialize patch_shards for this sample"
        )
    ring_um, pixel_size_um = float(meta.get(RING_UM, "nan")), float(meta.get("pixel_size_um", "nan"))
    return json.loads(meta[TILE_BOUNDS]), float(meta["patch_um"]), percentiles, ring_um, pixel_size_um


def require_rings(index: pd.DataFrame, sample_dirs: dict[str, Path], representation: str) -> None:
    """A ShardFormatError naming a sample whose shards were cut before masks held the ring, when the representation
    reads it."""
    if representation not in NEEDS_RING:
        return
    missing = sorted(index.loc[index["ring_um"].isna(), "sample"].unique())
    if missing:
        raise ShardFormatError(
            f"{ShardFiles(Path(sample_dirs[missing[0]])).folder}: patches cut before their masks held the perinuclear "
            f"ring that {representation} reads (samples {', '.join(missing)}): re-materialize tile_geometry and "
            "patch_shards for them, or train with representation dapi_masks"
        )
    spans = sorted(index["ring_um"].unique())
    if len(spans) > 1:
        raise ShardFormatError(
            f"the samples' rings differ ({', '.join(f'{s:g}' for s in spans)} µm): re-materialize patch_shards with "
            "one ring_um"
        )


def load_index(sample_dirs: dict[str, Path]) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """All tiles' index rows with sample, tile, shard path, the tile's bounds and the patch side (µm), and each
    sample's DAPI (low, high) percentiles. Shards without them are refused: no silent default."""
    frames, percentiles = [], {}
    for sample, folder in sample_dirs.items():
        tiles = [t.folder for t in ShardFiles(Path(folder)).done_tiles()]
        for tile in tiles:
            frame = read_index([tile])
            if not len(frame):
                continue
            bounds, patch_um, sample_percentiles, ring_um, pixel_size_um = _tile_metadata(tile)
            frame.insert(0, "tile", tile.name)
            frame.insert(0, "sample", sample)
            frame[list(BOUNDS)] = np.asarray(bounds, dtype=float)
            frame["patch_um"] = patch_um
            frame["ring_um"] = ring_um
            frame["pixel_size_um"] = pixel_size_um
            frames.append(frame)
            percentiles[sample] = (float(sample_percentiles[LOW]), float(sample_percentiles[HIGH]))
    if not frames:
        return pd.DataFrame(
            columns=["sample", "tile", "key", "path", *BOUNDS, "patch_um", "ring_um", "pixel_size_um"]
        ), percentiles
    return pd.concat(frames, ignore_index=True), percentiles


def join_labels(index: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The index rows of cells with a usable label (``labels``: key, label, confidence), the label joined on."""
    return index.merge(labels[["key", "label", "confidence"]], on="key", how="inner", validate="one_to_one")


def augment(x: torch.Tensor, generator: torch.Generator, blur: bool) -> torch.Tensor:
    """Rotations by 90°, flips (all channels), intensity and gamma jitter, noise, blur (DAPI only)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(1, 2))
    if torch.rand(1, generator=generator) < 0.5:
        x = torch.flip(x, dims=(2,))
    dapi = x[0].clamp(min=0)
    gain = 1 + 0.1 * (2 * torch.rand(1, generator=generator) - 1)
    gamma = torch.exp(0.15 * (2 * torch.rand(1, generator=generator) - 1))
    dapi = gain * dapi.pow(gamma) + 0.02 * torch.randn(dapi.shape, generator=generator)
    if blur and torch.rand(1, generator=generator) < 0.3:
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        dapi = F.conv2d(dapi[None, None], (kernel[:, None] * kernel[None, :])[None, None], padding=1)[0, 0]
    return torch.cat([dapi[None], x[1:]])


@dataclass
class ShardSplits:
    """Shard paths, sample counts and class counts of each split."""

    urls: dict[str, list[str]]
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)


def shard_splits(index: pd.DataFrame, splits: pd.Series) -> ShardSplits:
    """Shards, cells and class counts per split; ``splits``: each index row's split (a tile is in one split)."""
    names = ("train", "val", "test")
    urls = {s: sorted(index.loc[splits == s, "path"].unique()) for s in names}
    counts = {s: int((splits == s).sum()) for s in names}
    class_counts = {s: index.loc[splits == s, "label"].value_counts().to_dict() for s in names}
    return ShardSplits(urls, counts, class_counts)


class PatchDataModule(L.LightningDataModule):
    """Streams train / val / test shards; batches are (x, y) with x (B, C, input_px, input_px)."""

    def __init__(
        self,
        splits: ShardSplits,
        classes: list[str],
        percentiles: dict[str, tuple[float, float]],
        labels: dict[str, str],
        config: DataConfig = DataConfig(),
        seed: int = 0,
    ) -> None:
        """``labels``: key -> label of the cells to draw (others in the shards are skipped)."""
        super().__init__()
        self.splits, self.classes, self.percentiles, self.config, self.seed = splits, classes, percentiles, config, seed
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.targets = {key: self.class_index[label] for key, label in labels.items() if label in self.class_index}
        train = splits.class_counts.get("train", {})
        smallest = min((train.get(c, 0) for c in classes if train.get(c, 0) > 0), default=1)
        self.keep = {c: smallest / max(train.get(c, 1), 1) for c in classes}

    @property
    def in_chans(self) -> int:
        return CHANNELS[self.config.representation]

    def class_weights(self) -> torch.Tensor | None:
        """Inverse-frequency weights (mean 1) for the loss, when balance = weighted_loss."""
        if self.config.balance != "weighted_loss":
            return None
        counts = np.array([self.splits.class_counts["train"].get(c, 0) for c in self.classes], dtype=float)
        weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(self.classes), 0.0)
        return torch.tensor(weights / max(weights[weights > 0].mean(), 1e-9), dtype=torch.float32)

    def _prepare(self, train: bool):
        cfg, percentiles, targets, size = self.config, self.percentiles, self.targets, self.config.input_px

        def sample_to_tensors(sample: dict) -> tuple[torch.Tensor, int, str]:
            meta = sample[ShardMember.META]
            low, high = percentiles[meta["sample"]]
            x = resize(
                to_input(sample[ShardMember.DAPI], sample[ShardMember.MASK], low, high, cfg.representation), size
            )
            if train and cfg.augment:
                seed = zlib.crc32(sample["__key__"].encode()) + 7919 * self._epoch_seed() + self.seed
                generator = torch.Generator().manual_seed(seed % 2**63)
                x = augment(x, generator, cfg.blur)
            return x, targets[sample["__key__"]], sample["__key__"]

        return sample_to_tensors

    def _epoch_seed(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _dataset(self, split: str, train: bool) -> wds.WebDataset:
        urls = self.splits.urls[split]
        ds = wds.WebDataset(
            urls,
            shardshuffle=len(urls) if train else False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
            seed=self.seed,
        )
        # Cells without a usable label are dropped first: they take no room in the shuffle buffer and no decoding.
        ds = ds.select(lambda s: s["__key__"] in self.targets)
        if train:
            ds = ds.shuffle(self.config.shuffle_buffer, seed=self.seed)
        ds = ds.decode()
        if train and self.config.balance == "undersample":
            rng = np.random.default_rng(self.seed)
            keep = [self.keep[c] for c in self.classes]
            ds = ds.select(lambda s: rng.random() < keep[self.targets[s["__key__"]]])
        return ds.map(self._prepare(train))

    def _workers(self, split: str) -> int:
        return min(loader_workers(self.config.num_workers), max(1, len(self.splits.urls[split])))

    def steps_per_epoch(self) -> int:
        """Training batches per epoch (each loader worker may end on one partial batch)."""
        n = self.splits.counts["train"]
        if self.config.balance == "undersample":
            n = int(sum(self.splits.class_counts["train"].get(c, 0) * k for c, k in self.keep.items()))
        return math.ceil(n / self.config.batch_size) + self._workers("train") - 1

    def _loader(self, split: str, train: bool) -> wds.WebLoader:
        # No declared length: a stream split over workers ends on up to one partial batch per worker,
        # and a length would make Lightning stop before the last of them (and lose those cells).
        ds = self._dataset(split, train).batched(self.config.batch_size, partial=True)
        return wds.WebLoader(ds, batch_size=None, num_workers=self._workers(split), persistent_workers=False)

    def train_dataloader(self) -> wds.WebLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> wds.WebLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> wds.WebLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> wds.WebLoader:
        return self._loader("test", False)


def iter_patches(
    urls: list[str], percentiles: dict[str, tuple[float, float]], labels: dict[str, str], batch: int = 512
):
    """Plain (un-augmented) patches of the cells in ``labels`` (key -> label), in shard order, in batches:
    (normalised DAPI, mask, label, key, meta)."""
    dapi, masks, labels_, keys, metas = [], [], [], [], []
    stream = wds.WebDataset(urls, shardshuffle=False, empty_check=False).select(lambda s: s["__key__"] in labels)
    for sample in stream.decode():
        meta = sample[ShardMember.META]
        low, high = percentiles[meta["sample"]]
        dapi.append((sample[ShardMember.DAPI].astype(np.float32) - low) / max(high - low, 1.0))
        masks.append(sample[ShardMember.MASK])
        labels_.append(labels[sample["__key__"]])
        keys.append(sample["__key__"])
        metas.append(meta)
        if len(keys) == batch:
            yield np.stack(dapi), np.stack(masks), labels_, keys, metas
            dapi, masks, labels_, keys, metas = [], [], [], [], []
    if keys:
        yield np.stack(dapi), np.stack(masks), labels_, keys, metas
