from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import catalog
from core import data
from core.paths import InputError, cache_dir

from conftest import requires_mnist


def _folder(root: Path, sizes=((8, 8),) * 4, classes=("cat", "dog")) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i, size in enumerate(sizes):
                arr = np.full((*size, 3), 40 * i, dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_missing_dataset_message_names_dataset_folder_files_and_remedy(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_mnist.MNIST, "download", offline)
    with pytest.raises(data.DatasetNotFound) as err:
        data.load("mnist", "train", tmp_path / "empty")
    text = str(err.value)
    assert "'mnist'" in text and str(tmp_path / "empty" / "MNIST" / "raw") in text
    assert "train-images-idx3-ubyte" in text and "ROBUSTLAB_DATA" in text


def test_unknown_dataset_and_split():
    with pytest.raises(InputError, match="valid datasets: mnist, cifar10, imagefolder:PATH"):
        data.load("svhn", "train")
    with pytest.raises(InputError, match="valid splits: train, test"):
        data.load("mnist", "val")


def test_imagefolder_loads_and_caches(tmp_path):
    root = _folder(tmp_path / "pets")
    d = data.load(f"imagefolder:{root}", "train")
    assert d.images.shape == (8, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0] * 4 + [1] * 4
    assert any(p.suffix == ".safetensors" for p in (cache_dir()).iterdir())


def test_imagefolder_without_images(tmp_path):
    (tmp_path / "e" / "train" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no images"):
        data.load(f"imagefolder:{tmp_path / 'e'}", "train")


def test_imagefolder_mixed_sizes(tmp_path):
    root = _folder(tmp_path / "m", sizes=((8, 8), (9, 8)))
    with pytest.raises(InputError, match="mixed image sizes"):
        data.load(f"imagefolder:{root}", "train")


def test_imagefolder_unreadable_file(tmp_path):
    root = _folder(tmp_path / "u")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        data.load(f"imagefolder:{root}", "train")


def test_imagefolder_without_split_folder(tmp_path):
    with pytest.raises(data.DatasetNotFound, match="has no train/ folder"):
        data.load(f"imagefolder:{tmp_path}", "train")


def test_cifar10_loads_the_whole_test_set_from_the_shared_folder_and_says_so():
    if "cifar10" not in catalog.available():
        pytest.skip("cifar10-subset not found under ROBUSTLAB_DATA")
    test = data.load("cifar10", "test")
    assert len(test) == 10000 and test.input_shape == (3, 32, 32)
    assert test.source.startswith("CIFAR-10 test, 10,000 images (cifar10-subset ImageFolder")
    assert "10,000 test images: the whole test set" in catalog.available()["cifar10"]
    assert test.classes[0] == "airplane" and test.augment
    # the official test set has 1,000 images of each class; image 0 is a cat
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert data.cifar10_set("test", 1000) == "CIFAR-10 test subset, 1,000 of 10,000 images"


def test_a_split_cache_of_fewer_images_is_never_served(tmp_path):
    """The cache of a split is keyed by its folder, its file count and their newest time: the
    old 1,000-image cache of a folder that now holds more is not read."""
    root = _folder(tmp_path / "imgs")
    first = data.load(f"imagefolder:{root}", "test")
    assert len(list(cache_dir().glob("*.safetensors"))) >= 1
    data._MEMORY.clear()  # a new process: only the disk cache is left
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "test" / "cat" / "zz-new.png")
    second = data.load(f"imagefolder:{root}", "test")
    assert len(second) == len(first) + 1
    assert second.images[second.labels == 0].amax().item() == 255  # the new red image


def test_augment_batch_crops_and_flips_whole_batches():
    imgs = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = data.augment_batch(imgs, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    # every output row is a (possibly flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(imgs, (2, 2, 2, 2))
    for b in range(2):
        found = any(torch.equal(out[b, 0], w) or torch.equal(out[b, 0].flip(1), w)
                    for dy in range(5) for dx in range(5)
                    for w in [padded[b, 0, dy:dy + 6, dx:dx + 6]])
        assert found


def test_epoch_order_shards_are_disjoint_and_cover():
    parts = [data.epoch_order(10, seed=1, epoch=2, rank=r, world=2) for r in range(2)]
    assert set(parts[0].tolist()).isdisjoint(parts[1].tolist())
    assert len(parts[0]) == len(parts[1]) == 5
    assert not torch.equal(data.epoch_order(10, 1, 2), data.epoch_order(10, 1, 3))


@requires_mnist
def test_mnist_loads_as_uint8_tensors():
    d = data.load("mnist", "test")
    assert d.images.shape == (10000, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.labels[:5].tolist() == [7, 2, 1, 0, 4]
    sub = d.subset(100, seed=0)
    assert len(sub) == 100 and torch.equal(sub.images, d.images[sub.original_index()])


def test_holdout_splits_disjointly_and_keeps_original_indices():
    split = data.TensorData("toy", "train", torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1),
                            torch.arange(20) % 10, [str(i) for i in range(10)], "toy",
                            (0.5,), (0.5,)).subset(15, seed=1)
    rest, held = split.holdout(4, seed=2)
    assert len(rest) == 11 and len(held) == 4
    both = torch.cat([rest.original_index(), held.original_index()]).sort()[0]
    assert torch.equal(both, split.original_index())
    # the stored pixel equals the original index here, so rows still match their index
    assert torch.equal(held.images.flatten().long(), held.original_index())
    assert torch.equal(split.holdout(4, seed=2)[1].original_index(), held.original_index())
    with pytest.raises(InputError, match="cannot hold out 15 of 15 examples"):
        split.holdout(15)


def test_idx_files_are_read_plain_or_gzipped_and_a_damaged_one_is_named(tmp_path):
    import gzip
    import struct

    from core.catalog import DatasetNotFound
    from core.data import read_idx

    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 3, 4)
    blob = b"\0\0\x08\x03" + struct.pack(">3I", 2, 3, 4) + images.numpy().tobytes()
    (tmp_path / "plain-idx3-ubyte").write_bytes(blob)
    (tmp_path / "zipped-idx3-ubyte.gz").write_bytes(gzip.compress(blob))
    assert torch.equal(read_idx(tmp_path / "plain-idx3-ubyte"), images)
    assert torch.equal(read_idx(tmp_path / "zipped-idx3-ubyte.gz"), images)
    (tmp_path / "short").write_bytes(blob[:-5])
    with pytest.raises(DatasetNotFound, match="truncated or damaged"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DatasetNotFound, match="not an IDX file"):
        read_idx(tmp_path / "png")
