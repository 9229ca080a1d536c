"""Which datasets are on disk, and whether they are usable, found without decoding them (no
torch): the runner checks a job's data here before it creates the job's run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.paths import InputError, cache_dir, data_dir

DATASETS = ("mnist", "cifar10", "imagefolder:PATH")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_SIZES = {"train": 50000, "test": 10000}
MIN_SIDE = 8  # the models pool by 8
MIN_TRAIN_IMAGES = 10


class DatasetNotFound(InputError):
    """A dataset is neither on disk nor downloadable."""


def has_files(folder: Path, names: list[str]) -> bool:
    """Whether every file is in ``folder`` (uncompressed or .gz)."""
    return all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in names)


def available(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Which built-in datasets are present under the data root, and where (for status panels)."""
    base = data_dir(root)
    found = {}
    if has_files(base / "MNIST" / "raw", MNIST_FILES):
        found["mnist"] = str(base / "MNIST" / "raw")
    if (base / "cifar-10-batches-py").exists():
        found["cifar10"] = str(base / "cifar-10-batches-py")
    elif (base / "cifar10-subset" / "train").is_dir():
        test = base / "cifar10-subset" / "test"
        n = sum(1 for d in test.iterdir() if d.is_dir() for _ in os.scandir(d)) \
            if test.is_dir() else 0
        full = "the whole test set" if n == CIFAR10_SIZES["test"] else "a subset"
        found["cifar10"] = f"{base / 'cifar10-subset'} ({n:,} test images: {full})"
    return found


def scan_folder(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """Image files (path, label) and class names of an ImageFolder split."""
    if not folder.is_dir():
        raise DatasetNotFound(f"ImageFolder split {folder} does not exist")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = []
    for label, cls in enumerate(classes):
        for entry in sorted(os.scandir(folder / cls), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                files.append((entry.path, label))
    if not files:
        raise InputError(
            f"ImageFolder {folder} holds no images: expected <class>/<image> files with one of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return files, classes


def cache_path(folder: Path, files: list[tuple[str, int]]) -> Path:
    """Where the decoded tensors of an ImageFolder split are cached (keyed by its content)."""
    stamp = f"{folder.resolve()}|{len(files)}|{max(os.path.getmtime(p) for p, _ in files)}"
    return cache_dir() / f"{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.safetensors"


def check_images(folder: Path, files: list[tuple[str, int]]) -> None:
    """Open every image's header: unreadable files, mixed or too small sizes are refused."""
    from PIL import Image, UnidentifiedImageError

    first = None
    for path, _ in files:
        try:
            with Image.open(path) as img:
                size = img.size
                img.verify()  # the chunks and their checksums: a truncated file fails here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise InputError(f"ImageFolder {folder}: cannot read image {path} ({err})") from err
        if min(size) < MIN_SIDE:  # before the size mix: a tiny image is the problem to name
            raise InputError(f"ImageFolder {folder}: {path} is {size[0]}x{size[1]} pixels; the "
                             f"models need at least {MIN_SIDE}x{MIN_SIDE}")
        first = first or (size, path)
        if size != first[0]:
            raise InputError(f"ImageFolder {folder}: mixed image sizes, {path} is {size} but "
                             f"{first[1]} is {first[0]}; resize them to one size first")


def check_imagefolder(root: Path, expect_classes: list[str] | None = None) -> None:
    """An ImageFolder dataset (``root/train`` and ``root/test``) is usable: two classes or
    more, the same classes in both splits, enough training images, readable images of one size
    (checked once; a split already decoded into the cache was readable)."""
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFound(
                f"dataset 'imagefolder:{root}' has no {split}/ folder. Expected {root}/train/"
                f"<class>/<image> and {root}/test/<class>/<image> (any of "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}).")
        splits[split] = scan_folder(folder)
    files, classes = splits["train"]
    if expect_classes is not None and classes != expect_classes:
        raise InputError(f"{root}: classes {classes} differ from the expected {expect_classes}")
    if len(classes) < 2:
        raise InputError(f"ImageFolder {root / 'train'} has {len(classes)} class folder(s) "
                         f"({', '.join(classes)}); a classifier needs at least 2")
    if splits["test"][1] != classes:
        raise InputError(f"ImageFolder {root}: test classes {splits['test'][1]} differ from "
                         f"the training classes {classes}")
    if len(files) < MIN_TRAIN_IMAGES:
        raise InputError(f"ImageFolder {root / 'train'} holds {len(files)} image(s); training "
                         f"needs at least {MIN_TRAIN_IMAGES}")
    for split, (split_files, _) in splits.items():
        if not cache_path(root / split, split_files).exists():
            check_images(root / split, split_files)


def check(name: str, root: str | os.PathLike | None = None) -> str | None:
    """Raise a clear InputError when dataset ``name`` is unusable; return None when it is on
    disk, or ``"download"`` when torchvision must fetch it first."""
    base = data_dir(root)
    if name == "mnist":
        return None if has_files(base / "MNIST" / "raw", MNIST_FILES) else "download"
    if name == "cifar10":
        if (base / "cifar-10-batches-py").exists():
            return None
        if (base / "cifar10-subset").is_dir():
            check_imagefolder(base / "cifar10-subset", CIFAR10_CLASSES)
            return None
        return "download"
    if name.startswith("imagefolder:"):
        check_imagefolder(Path(name.split(":", 1)[1]).expanduser())
        return None
    raise InputError(f"unknown dataset {name!r}; valid datasets: mnist, cifar10, "
                     "imagefolder:PATH")


def split_size(name: str, split: str, root: str | os.PathLike | None = None) -> int | None:
    """How many images a split holds, read from headers and folder listings (no decoding);
    None when it is not on disk yet."""
    base = data_dir(root)
    if name == "mnist":
        raw = base / "MNIST" / "raw"
        path = raw / ("train-labels-idx1-ubyte" if split == "train" else "t10k-labels-idx1-ubyte")
        if path.exists():
            with open(path, "rb") as fh:
                return int.from_bytes(fh.read(8)[4:8], "big")
        return None
    if name == "cifar10":
        if (base / "cifar-10-batches-py").exists():
            return CIFAR10_SIZES[split]
        folder = base / "cifar10-subset" / split
    elif name.startswith("imagefolder:"):
        folder = Path(name.split(":", 1)[1]).expanduser() / split
    else:
        return None
    if not folder.is_dir():
        return None
    return len(scan_folder(folder)[0])
