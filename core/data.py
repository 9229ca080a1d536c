"""Datasets as in-memory uint8 tensors, with batch iteration and whole-batch augmentation.

Names: ``mnist``, ``cifar10`` (torchvision's files, else the ``cifar10-subset`` ImageFolder
found under the data root) and ``imagefolder:PATH`` (a tree with ``train/`` and ``test/``).
Each split is decoded once, cached under ``artifacts/cache`` as safetensors keyed by its
source, and kept in memory; pixels leave this module as floats in [0, 1].
"""
from __future__ import annotations

import gzip
import logging
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core.catalog import (CIFAR10_CLASSES, CIFAR10_SIZES, DATASETS, MNIST_FILES, SPLITS, DatasetNotFound,
                          cache_path, has_files, scan_folder)
from core.paths import InputError, data_dir

log = logging.getLogger(__name__)

_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

@dataclass
class TensorData:
    """One split of a dataset held as uint8 images (N, C, H, W) and int64 labels."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    indices: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def subset(self, n: int | None, seed: int = 0) -> "TensorData":
        """A reproducible, class-mixed subset of ``n`` examples (all when n is None or too big)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise InputError(f"subset size must be positive, got {n}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.take(order.sort()[0])

    def holdout(self, n: int, seed: int = 0) -> tuple["TensorData", "TensorData"]:
        """Split into (the rest, ``n`` reproducibly chosen held-out examples), disjoint."""
        if not 0 < n < len(self):
            raise InputError(f"cannot hold out {n} of {len(self)} examples; hold out between 1 "
                             f"and {len(self) - 1}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.take(order[n:].sort()[0]), self.take(order[:n].sort()[0])

    def take(self, positions: torch.Tensor) -> "TensorData":
        """The examples at ``positions``, keeping their index in the full split."""
        base = self.original_index()
        return TensorData(self.name, self.split, self.images[positions], self.labels[positions],
                          self.classes, self.source, self.mean, self.std, self.augment,
                          base[positions])

    def original_index(self) -> torch.Tensor:
        """Index of each example in the full split (for per-example records)."""
        return self.indices if self.indices is not None else torch.arange(len(self))

    def to(self, device: torch.device | str) -> "TensorData":
        """The split with its images and labels on ``device`` (moved once; batches are then
        indexed, augmented and converted there). Positions in the full split stay on the CPU."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return replace(self, images=_to(self.images, device), labels=_to(self.labels, device))

    def floats(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images at ``idx`` as float32 in [0, 1]."""
        return unit_floats(self.images if idx is None else self.images[idx])


def load(name: str, split: str, root: str | os.PathLike | None = None) -> TensorData:
    """Load a dataset split by name; see the module docstring for names and sources."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    base = data_dir(root)
    key = (name, split, str(base))
    if key not in _MEMORY:
        _MEMORY[key] = _load_uncached(name, split, base)
    return _MEMORY[key]


_MEMORY: dict[tuple[str, str, str], TensorData] = {}


def _load_uncached(name: str, split: str, base: Path) -> TensorData:
    if name == "mnist":
        return _mnist(split, base)
    if name == "cifar10":
        return _cifar10(split, base)
    if name.startswith("imagefolder:"):
        return _imagefolder_dataset(Path(name.split(":", 1)[1]).expanduser(), split)
    raise InputError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format: two zero bytes, the type 0x08 for unsigned bytes, the
    number of dimensions, big-endian sizes, then the bytes), plain or gzipped. Read here rather
    than through torchvision, whose import alone costs every job about 1.3 s on 2 cores."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise DatasetNotFound(f"{path} is not an IDX file of unsigned bytes (MNIST's format)")
    dims = struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])
    if data.size != math.prod(dims):
        raise DatasetNotFound(f"{path} holds {data.size:,} bytes where its header promises "
                              f"{math.prod(dims):,}: the file is truncated or damaged")
    return torch.from_numpy(data.copy()).view(*dims)


def _mnist_files(raw: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    found = [raw / n if (raw / n).exists() else raw / f"{n}.gz"
             for n in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")]
    return read_idx(found[0]), read_idx(found[1])


def _mnist(split: str, base: Path) -> TensorData:
    raw = base / "MNIST" / "raw"
    expected = MNIST_FILES
    mean, std = _STATS["mnist"]
    if has_files(raw, expected):
        images, labels = _mnist_files(raw, split)
        return TensorData("mnist", split, images.unsqueeze(1).contiguous(), labels.long(),
                          [str(i) for i in range(10)], f"MNIST IDX files at {raw}", mean, std,
                          augment=False)
    from torchvision.datasets import MNIST  # only to download

    try:
        ds = MNIST(str(base), train=split == "train", download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError when offline
        raise DatasetNotFound(
            f"dataset 'mnist' not found in {raw} and could not be downloaded ({err}). "
            f"Expected files there: {', '.join(expected)} (uncompressed IDX, or .gz). "
            "Provide them with --data-dir / ROBUSTLAB_DATA pointing at the folder holding "
            "MNIST/raw, or run once with internet access to download them."
        ) from err
    return TensorData("mnist", split, ds.data.unsqueeze(1).contiguous(), ds.targets.long(),
                      [str(i) for i in range(10)], f"torchvision MNIST at {base}", mean, std,
                      augment=False)


def _cifar10(split: str, base: Path) -> TensorData:
    mean, std = _STATS["cifar10"]
    batches = base / "cifar-10-batches-py"
    subset = base / "cifar10-subset" / split
    if not batches.exists() and subset.is_dir():
        folder = _imagefolder_split(subset, "cifar10", split, expect_classes=CIFAR10_CLASSES)
        log.info("cifar10: torchvision files absent, using the ImageFolder %s (%d images)",
                 subset, len(folder))
        folder.name, folder.mean, folder.std, folder.augment = "cifar10", mean, std, True
        folder.source = f"{cifar10_set(split, len(folder))} (cifar10-subset ImageFolder at {subset})"
        return folder
    from torchvision.datasets import CIFAR10  # its import costs 1.3 s: only when it is used

    try:
        ds = CIFAR10(str(base), train=split == "train", download=not batches.exists())
    except Exception as err:  # offline download failure
        raise DatasetNotFound(
            f"dataset 'cifar10' not found in {base} and could not be downloaded ({err}). "
            f"Expected either {batches}/ (torchvision's data_batch_1..5 and test_batch) or "
            f"{base / 'cifar10-subset'}/{{train,test}}/<class>/*.png. Provide one with "
            "--data-dir / ROBUSTLAB_DATA, or run once with internet access to download it."
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return TensorData("cifar10", split, images, torch.tensor(ds.targets, dtype=torch.long),
                      list(ds.classes), f"{cifar10_set(split, len(images))} (torchvision CIFAR10 "
                      f"at {base})", mean, std, augment=True)


def cifar10_set(split: str, n: int) -> str:
    """Which CIFAR-10 set a split is: 'CIFAR-10 test, 10,000 images', or a subset with its
    size (every accuracy names it)."""
    full = CIFAR10_SIZES[split]
    if n == full:
        return f"CIFAR-10 {split}, {n:,} images"
    return f"CIFAR-10 {split} subset, {n:,} of {full:,} images"


def _imagefolder_dataset(root: Path, split: str) -> TensorData:
    folder = root / split
    if not folder.is_dir():
        raise DatasetNotFound(
            f"dataset 'imagefolder:{root}' has no {split}/ folder. Expected {root}/train/<class>/"
            f"<image> and {root}/test/<class>/<image>.")
    return _imagefolder_split(folder, f"imagefolder:{root}", split)


def _imagefolder_split(folder: Path, name: str, split: str,
                       expect_classes: list[str] | None = None) -> TensorData:
    files, classes = scan_folder(folder)
    if expect_classes is not None and classes != expect_classes:
        raise InputError(f"{folder}: classes {classes} differ from the expected {expect_classes}")
    cached = cache_path(folder, files)
    if cached.exists():
        tensors = load_file(str(cached))
        images, labels = tensors["images"], tensors["labels"]
    else:
        images, labels = _decode(files, folder)
        tmp = cached.with_suffix(".tmp")
        save_file({"images": images, "labels": labels}, str(tmp))
        os.replace(tmp, cached)
    mean, std = _channel_stats(images)
    return TensorData(name, split, images, labels, classes, f"ImageFolder at {folder}",
                      mean, std, augment=False)


def _decode(files: list[tuple[str, int]], folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    arrays, size, mode = [], None, None
    for path, _ in files:
        try:
            with Image.open(path) as img:
                mode = mode or ("L" if img.mode in ("L", "1", "I;16") else "RGB")
                arr = np.asarray(img.convert(mode))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"ImageFolder {folder}: cannot read image {path} ({err})") from err
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise InputError(
                f"ImageFolder {folder}: mixed image sizes, {path} is {arr.shape[:2]} but the "
                f"first image is {size[:2]}; resize them to one size first"
            )
        arrays.append(arr)
    stacked = torch.from_numpy(np.stack(arrays))
    images = stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return images.contiguous(), labels


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[: min(len(images), 10000)].float().div(255.0)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Shuffled example order for one epoch, sharded so each rank sees a distinct part."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    per_rank = n // world
    return order[rank * per_rank:(rank + 1) * per_rank]


_UNIT_TABLES: dict[torch.device, torch.Tensor] = {}


def unit_floats(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] with the same bits on every device. The CPU divides
    by 255 with correct rounding; a GPU's division can differ in the last bit (seen on an
    H200), so there the 256 values are looked up in a table the CPU computed."""
    if images.device.type == "cpu":
        return images.float().div_(255.0)
    if images.device not in _UNIT_TABLES:
        _UNIT_TABLES[images.device] = (torch.arange(256, dtype=torch.float32) / 255).to(
            images.device)
    return _UNIT_TABLES[images.device][images.long()]


def resident(split: TensorData, device: torch.device, share: float = 0.25) -> TensorData:
    """``split`` moved to ``device`` once, where that is a GPU with room for it (at most
    ``share`` of its free memory): batches are then cut, augmented and converted there, and
    no step waits for a copy from the host. Elsewhere, the split as it is."""
    if device.type != "cuda":
        return split
    free, _total = torch.cuda.mem_get_info(device)
    size = split.images.numel() * split.images.element_size()
    return split.to(device) if size <= share * free else split


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from pinned memory, without waiting for its queue."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and horizontal flip on a uint8 batch, on the
    batch's device. The random numbers come from the CPU ``generator`` whatever the device, so a
    GPU run crops and flips exactly as a CPU run (and a resumed run as an unbroken one)."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    if dev.type != "cpu":  # one small copy that does not wait for the device's queue
        dy, dx, flip = torch.stack([dy, dx, flip.long()]).to(dev, non_blocking=True)
        flip = flip.bool()
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(data: TensorData, batch_size: int, order: torch.Tensor | None = None,
            augment: bool = False, generator: torch.Generator | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (float images in [0, 1], labels, positions) batches in ``order`` (default: as
    stored), on the device that holds ``data`` (see :meth:`TensorData.to`): a split moved to a
    GPU once is indexed, augmented and converted there, with no copy per batch."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    order = torch.arange(len(data)) if order is None else order
    if order.device != data.images.device:
        order = _to(order, data.images.device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        imgs = data.images[idx]
        if augment:
            imgs = augment_batch(imgs, generator or torch.Generator().manual_seed(0))
        yield unit_floats(imgs), data.labels[idx], idx
