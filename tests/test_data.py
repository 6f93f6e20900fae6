import numpy as np
import pytest
import torch

from rp_tune.config import DataConfig
from rp_tune.data import DataError, DeviceLoader, augment, load_arrays
from tests.helpers import write_tiny_cifar10


def test_cifar_format_through_torchvision_with_disjoint_validation(tmp_path):
    write_tiny_cifar10(tmp_path, n_train=200, n_test=60)
    splits = load_arrays(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert len(splits.train[1]) == 180 and len(splits.val[1]) == 20
    assert len(splits.test[1]) == 60 and splits.num_classes == 10
    assert splits.train[0].dtype == torch.uint8 and splits.train[0].shape[1:] == (3, 32, 32)
    # pixel (c=0, 0, 0) holds the original index: validation is the last 10%, no overlap
    train_ids = set(splits.train[0][:, 0, 0, 0].tolist())
    val_ids = set(splits.val[0][:, 0, 0, 0].tolist())
    assert train_ids.isdisjoint(val_ids)
    assert sorted(val_ids) == list(range(180, 200))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="(?s)dataset cifar10 at data.root=.*missing.*download"):
        load_arrays(DataConfig(name="cifar10", root=str(tmp_path / "nothing"), download=False))


def test_corrupt_file_is_a_clear_error(tmp_path):
    folder = write_tiny_cifar10(tmp_path)
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="missing or corrupt"):
        load_arrays(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_augment_is_a_shifted_padded_crop_or_its_mirror():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(16):
        found = False
        for dy in range(9):
            for dx in range(9):
                crop = padded[b, :, dy : dy + 32, dx : dx + 32]
                if torch.equal(out[b], crop) or torch.equal(out[b], crop.flip(-1)):
                    found = True
        assert found


def test_loader_epochs_are_reproducible_and_shards_disjoint():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32).clone()
    y = torch.arange(100)
    a = [b[1] for b in DeviceLoader(x, y, 10, train=True, seed=1).epoch(3)]
    b = [b[1] for b in DeviceLoader(x, y, 10, train=True, seed=1).epoch(3)]
    c = [b[1] for b in DeviceLoader(x, y, 10, train=True, seed=1).epoch(4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    r0 = torch.cat([b[1] for b in DeviceLoader(x, y, 10, train=True, seed=1, world=2).epoch(0)])
    r1 = torch.cat(
        [b[1] for b in DeviceLoader(x, y, 10, train=True, seed=1, rank=1, world=2).epoch(0)]
    )
    assert set(r0.tolist()).isdisjoint(r1.tolist()) and len(r0) == len(r1) == 50
    with pytest.raises(DataError, match="smaller than one batch"):
        DeviceLoader(x, y, 128, train=True)


def test_synthetic_is_seeded():
    a = load_arrays(DataConfig(name="synthetic", synthetic_train=50, synthetic_test=10), seed=3)
    b = load_arrays(DataConfig(name="synthetic", synthetic_train=50, synthetic_test=10), seed=3)
    assert torch.equal(a.train[0], b.train[0])
    assert np.unique(a.train[1].numpy()).size > 1


def test_uri_data_root_is_copied_once_per_node_into_the_cache(tmp_path, monkeypatch):
    """data.root=file://... stands for s3://...: the dataset is copied into this node's cache
    under a lock, once; later reads use the copy; an unfinished copy is redone."""
    from rp_tune import data

    bucket = tmp_path / "bucket"
    write_tiny_cifar10(bucket, n_train=100, n_test=20)
    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "cache"))
    cfg = DataConfig(name="cifar10", root=bucket.as_uri(), download=False)
    first = load_arrays(cfg)
    local = data.data_cache(cfg.root)
    assert local.parent == tmp_path / "cache"
    assert (local / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert (local / data.COMPLETE.format(entry="cifar-10-batches-py")).is_file()
    expect = load_arrays(DataConfig(name="cifar10", root=str(bucket), download=False))
    assert torch.equal(first.train[0], expect.train[0]) and torch.equal(
        first.test[1], expect.test[1]
    )
    # a second trial on this node reads the copy: the bucket is not read again
    write_tiny_cifar10(bucket, n_train=100, n_test=20, seed=5)
    again = load_arrays(cfg)
    assert torch.equal(again.train[0], first.train[0])
    # a copy cut short (no completion marker) is thrown away and made again
    (local / data.COMPLETE.format(entry="cifar-10-batches-py")).unlink()
    (local / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    redone = load_arrays(cfg)
    assert torch.equal(
        redone.train[0], load_arrays(DataConfig(name="cifar10", root=str(bucket))).train[0]
    )
    assert not torch.equal(redone.train[0], first.train[0])


def test_uri_data_root_without_the_dataset_is_a_clear_error(tmp_path, monkeypatch):
    from rp_tune import data

    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "bucket").mkdir()
    root = (tmp_path / "bucket").as_uri()
    with pytest.raises(DataError, match=f"cifar10 at data.root='{root} \\(copied to "):
        load_arrays(DataConfig(name="cifar10", root=root, download=False))


def test_relative_data_root_is_made_absolute_for_ray_workers(tmp_path, monkeypatch):
    from rp_tune.data import absolute_data_root
    from rp_tune.sweep import expand_space

    monkeypatch.chdir(tmp_path)
    assert absolute_data_root("data") == str(tmp_path / "data")
    assert absolute_data_root("~/rp_data") == "~/rp_data"  # each node's own home
    assert absolute_data_root("s3://b/datasets") == "s3://b/datasets"
    assert {c.data.root for c in expand_space("smoke")} == {str(tmp_path / "data")}
