import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rp_tune.config import DataConfig
from rp_tune.data import MANIFEST, DataError, DeviceLoader, augment, load_arrays
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
    from rp_tune.planning.space import expand_space

    monkeypatch.chdir(tmp_path)
    assert absolute_data_root("data") == str(tmp_path / "data")
    assert absolute_data_root("~/rp_data") == "~/rp_data"  # each node's own home
    assert absolute_data_root("s3://b/datasets") == "s3://b/datasets"
    assert {c.data.root for c in expand_space("smoke")} == {str(tmp_path / "data")}


def _write_jpeg_tree(folder, per_class_train=24, per_class_test=6, seed=0):
    """CIFAR-like JPEGs in `folder/{train,test}/<class>/NNNN.jpg`; returns the class names."""
    from PIL import Image

    from rp_tune.data import synthetic_arrays
    from tests.helpers import CLASSES

    for split, per in (("train", per_class_train), ("test", per_class_test)):
        x, y = synthetic_arrays(per * 40, 10, seed, split)
        for c, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for i, img in enumerate(x[y == c][:per]):
                Image.fromarray(img).save(folder / split / name / f"{i:04d}.jpg", quality=90)
    return CLASSES


def test_prepare_cifar10_from_a_jpeg_folder_then_train_one_epoch(tmp_path):
    """The offline path: JPEGs -> `python -m rp_tune.data prepare` -> torchvision's loader
    (with the checksum manifest) -> one epoch of a real trial, end to end."""
    from PIL import Image

    from rp_tune.config import from_flat
    from rp_tune.data import main
    from rp_tune.trial.train import run_trial

    classes = _write_jpeg_tree(tmp_path / "jpg")
    root = tmp_path / "data"
    args = ["prepare", "cifar10", "--from-folder", str(tmp_path / "jpg"), "--root", str(root)]
    assert main(args) == 0
    assert json.loads((root / "cifar-10-batches-py" / MANIFEST).read_text())
    assert not [p for p in root.iterdir() if "partial" in p.name]  # no half-written folder
    splits = load_arrays(DataConfig(name="cifar10", root=str(root), download=False))
    assert len(splits.train[1]) + len(splits.val[1]) == 240 and len(splits.test[1]) == 60
    # the class index is the alphabetical folder order; pixels are the decoded JPEGs
    want = np.asarray(Image.open(tmp_path / "jpg" / "test" / classes[3] / "0002.jpg"))
    test_x, test_y = splits.test[0].permute(0, 2, 3, 1).numpy(), splits.test[1].numpy()
    match = [i for i in range(len(test_y)) if np.array_equal(test_x[i], want)]
    assert match and all(test_y[i] == 3 for i in match)
    # the training order is shuffled, so the validation split (last 10%) holds many classes
    assert len(set(splits.val[1].tolist())) >= 5
    cfg = from_flat(
        {
            "data.name": "cifar10",
            "data.root": str(root),
            "data.download": False,
            "model.name": "cifar_resnet_8",
            "train.epochs": 1,
            "train.batch_size": 24,
            "evaluation.ood_sets": ["gaussian"],
            "evaluation.fgsm": False,
        }
    )
    r = run_trial(cfg, tmp_path / "run")
    assert r["epoch"] == 1 and np.isfinite(r["train_loss"]) and 0.0 <= r["test_acc"] <= 1.0
    assert r["ood_used"] == "gaussian"


def test_prepare_refuses_bad_folders_and_overwrites_nothing(tmp_path, capsys):
    from PIL import Image

    from rp_tune.data import main

    _write_jpeg_tree(tmp_path / "jpg", per_class_train=2, per_class_test=1)
    args = ["prepare", "cifar10", "--from-folder", str(tmp_path / "jpg"), "--root"]
    assert main(["prepare", "cifar100", *args[2:], str(tmp_path / "a")]) == 2
    assert "cifar100 has 100 classes" in capsys.readouterr().err
    assert not (tmp_path / "a" / "cifar-100-python").exists()
    Image.new("RGB", (64, 48)).save(tmp_path / "jpg" / "train" / "cat" / "big.jpg")
    assert main([*args, str(tmp_path / "b")]) == 2
    assert "big.jpg is 64x48; CIFAR images are 32x32" in capsys.readouterr().err
    (tmp_path / "jpg" / "train" / "cat" / "big.jpg").unlink()
    assert main([*args, str(tmp_path / "c")]) == 0
    assert main([*args, str(tmp_path / "c")]) == 2  # never over an existing dataset
    assert "exists already" in capsys.readouterr().err
    nope = ["prepare", "cifar10", "--from-folder", str(tmp_path / "nope")]
    assert main([*nope, "--root", str(tmp_path / "d")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_synthetic_splits_share_the_class_templates_and_a_short_run_beats_chance(tmp_path):
    from rp_tune.config import from_flat
    from rp_tune.data import synthetic_arrays
    from rp_tune.trial.train import run_trial

    train_x, train_y = synthetic_arrays(400, 10, 0, "train")
    test_x, test_y = synthetic_arrays(400, 10, 0, "test")
    assert not np.array_equal(train_x[:10], test_x[:10])  # other images ...
    for c in range(3):  # ... of the same classes: class means agree across the splits
        a = train_x[train_y == c].mean(0)
        b = test_x[test_y == c].mean(0)
        other = test_x[test_y == c + 1].mean(0)
        assert np.abs(a - b).mean() < 0.5 * np.abs(a - other).mean()
    cfg = from_flat(
        {
            "data.name": "synthetic",
            "data.synthetic_train": 512,
            "data.synthetic_test": 256,
            "model.name": "cifar_resnet_8",
            "train.epochs": 2,
            "train.batch_size": 64,
            "evaluation.fgsm": False,
            "evaluation.grad_flow_every": 0,
        }
    )
    r = run_trial(cfg, tmp_path / "run")
    assert r["test_acc"] > 0.4, r["test_acc"]  # chance is 0.1


def test_svhn_written_in_its_mat_format_loads_and_a_damaged_one_is_refused(tmp_path):
    from rp_tune.data import read_split, synthetic_arrays, write_svhn_split

    x, y = synthetic_arrays(20, 10, 1, "test")
    path = write_svhn_split(tmp_path, "test", x, y)
    cfg = DataConfig(name="svhn", root=str(tmp_path), download=False)
    got_x, got_y, classes = read_split(cfg, train=False)
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y) and classes == 10
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="dataset svhn at data.root=.*missing or corrupt"):
        read_split(DataConfig(name="svhn", root=str(tmp_path), download=False), train=False)


def test_check_command_and_ensure_dataset_leave_no_trace_on_failure(tmp_path, capsys):
    from rp_tune.data import Need, ensure_dataset, main
    from tests.helpers import write_tiny_cifar10

    write_tiny_cifar10(tmp_path / "ok")
    assert main(["check", "cifar10", "--root", str(tmp_path / "ok")]) == 0
    assert "present and intact" in capsys.readouterr().out
    assert main(["check", "cifar100", "--root", str(tmp_path / "ok")]) == 2
    err = capsys.readouterr().err
    assert "dataset cifar100 at data.root=" in err and "expected there: cifar-100-python/" in err
    left = [p.name for p in (tmp_path / "ok").iterdir()]
    assert "cifar-10-batches-py" in left and not [n for n in left if "100" in n]
    with pytest.raises(DataError):
        ensure_dataset(Need("cifar10", str(tmp_path / "new"), False, ("test",), False))
    assert not (tmp_path / "new").exists()


def _write_image_folder(folder, classes, per_class):
    from PIL import Image

    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(folder / c / f"{i}.JPEG")


def test_imagenet_trains_on_the_whole_training_folder_unless_validation_is_asked(tmp_path):
    from rp_tune.data import imagenet_loaders

    _write_image_folder(tmp_path / "imagenet" / "train", ["n01", "n02"], 10)
    _write_image_folder(tmp_path / "imagenet" / "val", ["n01", "n02"], 2)
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=32, num_workers=0)
    assert cfg.val_fraction == 0.0  # both papers train on all of ImageNet
    assert DataConfig(name="cifar10").val_fraction == 0.1
    train, val, test, classes = imagenet_loaders(cfg, 4, 8, seed=0)
    assert len(train.dataset) == 20 and val is None and len(test.dataset) == 4 and classes == 2
    asked = DataConfig(
        name="imagenet", root=str(tmp_path), image_size=32, num_workers=0, val_fraction=0.2
    )
    splits = [imagenet_loaders(asked, 4, 8, seed=s) for s in (0, 1)]
    v0, v1 = (sorted(s[1].dataset.indices.tolist()) for s in splits)
    assert v0 == v1 and len(v0) == 4  # a fixed split, whatever the trial seed
    assert set(v0).isdisjoint(splits[0][0].dataset.indices.tolist())


def test_imagenet_with_other_classes_in_val_than_in_train_is_refused(tmp_path):
    from rp_tune.data import Need, ensure_dataset

    _write_image_folder(tmp_path / "imagenet" / "train", ["n01", "n02"], 1)
    _write_image_folder(tmp_path / "imagenet" / "val", ["n01"], 1)
    with pytest.raises(DataError, match="train has 2 class folders and val 1"):
        ensure_dataset(Need("imagenet", str(tmp_path), False, ("test", "train"), False))
    with pytest.raises(DataError, match="(?s)no folder .*imagenet-o.*expected there: imagenet-o"):
        ensure_dataset(Need("imagenet_o", str(tmp_path), False, ("test",), True))


def test_a_failed_download_removes_the_folders_it_made_and_nothing_else(tmp_path, monkeypatch):
    """A download that fails half-way (a partial archive written) leaves no trace: neither
    the root nor the parents created for it; in an existing root only what it added goes."""
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    from rp_tune.data import Need, ensure_dataset

    def broken_download(url, download_root, **kw):
        Path(download_root, "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", broken_download)
    nested = tmp_path / "a" / "b" / "data"
    with pytest.raises(DataError, match="(?s)URLError.*the download failed"):
        ensure_dataset(Need("cifar10", str(nested), True, ("test", "train"), False))
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    with pytest.raises(DataError):
        ensure_dataset(Need("cifar10", str(existing), True, ("test", "train"), False))
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


def test_cleanup_leaves_a_lock_file_that_another_process_holds(tmp_path):
    from filelock import FileLock

    from rp_tune.data.preflight import _remove_unless_locked

    held, free = tmp_path / ".a.lock", tmp_path / ".b.lock"
    free.write_text("")
    with FileLock(str(held)):
        _remove_unless_locked(held)
        _remove_unless_locked(free)
        assert held.exists()
    assert not free.exists()


def test_replacing_the_dataset_takes_its_validation_default():
    from rp_tune.config import from_flat

    cfg = from_flat({"data.name": "cifar10"})
    assert cfg.data.val_fraction == 0.1
    assert cfg.replace(**{"data.name": "imagenet", "model.name": "resnet18"}).data.val_fraction == 0
    kept = from_flat({"data.name": "cifar10", "data.val_fraction": 0.2})
    assert kept.replace(**{"data.name": "svhn"}).data.val_fraction == 0.2


def test_an_imagenet_trial_reports_top5_from_the_registry(tmp_path):
    """top-5 is declared once (metrics.METRICS, ImageNet only): an ImageNet trial computes it,
    the console table shows its column, a CIFAR-style trial has neither."""
    from rp_tune.config import from_flat
    from rp_tune.planning.plan import SweepSummary, TrialOutcome
    from rp_tune.trial.metrics import unregistered
    from rp_tune.trial.train import run_trial

    classes = [f"n{i:02d}" for i in range(7)]
    _write_image_folder(tmp_path / "imagenet" / "train", classes, 4)
    _write_image_folder(tmp_path / "imagenet" / "val", classes, 2)
    cfg = from_flat({
        "model.name": "resnet18", "data.name": "imagenet", "data.root": str(tmp_path),
        "data.image_size": 32, "data.num_workers": 0, "train.recipe": "imagenet",
        "train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": 7,
        "evaluation.batch_size": 14, "evaluation.ood": False, "evaluation.fgsm": False,
        "resources.gpus_per_worker": 0,
    })  # fmt: skip
    result = run_trial(cfg, tmp_path / "run")
    assert 0.0 <= result["test_acc"] <= result["test_top5"] <= 1.0
    assert unregistered(result["history"][-1]) == []
    table = SweepSummary("x", "p", [TrialOutcome("k", "finished", 1, 1, 0, result)]).table()
    assert "top5" in table.splitlines()[0]
    synthetic = cfg.replace(**{"data.name": "synthetic", "model.name": "cifar_resnet_8",
                               "train.recipe": "cifar", "data.synthetic_train": 64,
                               "data.synthetic_test": 32, "train.batch_size": 16,
                               "train.epochs": 1})  # fmt: skip
    assert "test_top5" not in run_trial(synthetic, tmp_path / "cifar")


def test_the_integrity_manifest_is_what_the_loader_checks_and_its_digest_tells_copies_apart(
    tmp_path,
):
    """Converted CIFAR: rp_tune's checksum manifest (the loader checks it), so the digest
    changes with the files; torchvision's originals: its md5 constants; synthetic data: the
    parameters that make it."""
    from rp_tune.data import integrity_manifest, manifest_digest

    a, b = tmp_path / "a", tmp_path / "b"
    folder = write_tiny_cifar10(a, n_train=40, n_test=10)
    write_tiny_cifar10(b, n_train=40, n_test=10, seed=1)
    cfg_a = DataConfig(name="cifar10", root=str(a), download=False)
    cfg_b = DataConfig(name="cifar10", root=str(b), download=False)
    manifest = integrity_manifest(cfg_a)
    assert manifest == json.loads((folder / MANIFEST).read_text())
    assert sorted(manifest) == sorted(["batches.meta", "test_batch",
                                       *(f"data_batch_{i}" for i in range(1, 6))])  # fmt: skip
    assert manifest_digest(manifest) != manifest_digest(integrity_manifest(cfg_b))
    assert len(manifest_digest(manifest)) == 32  # MLflow keeps at most 36
    (folder / MANIFEST).unlink()  # torchvision's own files: its checksums
    assert integrity_manifest(cfg_a)["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    syn = DataConfig(name="synthetic")
    assert integrity_manifest(syn, 0) != integrity_manifest(syn, 1)


def test_tiny_imagenet_in_its_usual_layout_loads_with_classes_from_wnids_and_annotations(
    tmp_path, caplog
):
    from rp_tune.data import TINY_CACHE, integrity_manifest, manifest_digest, read_split
    from tests.helpers import write_tiny_imagenet

    folder = write_tiny_imagenet(tmp_path, wnids=("n02", "n01", "n03"), per_class=8)
    cfg = DataConfig(name="tinyimagenet", root=str(tmp_path), download=False)
    x, y, classes = read_split(cfg, train=True)
    assert x.shape == (24, 64, 64, 3) and x.dtype == np.uint8 and classes == 3
    assert y.tolist() == [0] * 8 + [1] * 8 + [2] * 8  # class i = line i of wnids.txt
    # the grayscale training image came out RGB; the colours tell the classes apart
    assert x[0].shape == (64, 64, 3) and abs(float(x[8].mean()) - float(x[16].mean())) > 1
    tx, ty, _ = read_split(cfg, train=False)
    annotations = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    wnids = ["n02", "n01", "n03"]
    assert ty.tolist() == [wnids.index(ln.split("\t")[1]) for ln in annotations]
    assert tx.shape == (9, 64, 64, 3)
    # the decoded arrays are cached under a manifest; the next read loads them
    assert (folder / TINY_CACHE / "train_images.npy").is_file()
    caplog.clear()
    again, _, _ = read_split(cfg, train=True)
    assert np.array_equal(again, x) and "decoding" not in caplog.text
    digest = manifest_digest(integrity_manifest(cfg))
    # a damaged cache is decoded again, not trusted
    (folder / TINY_CACHE / "train_images.npy").write_bytes(b"damaged")
    fixed, _, _ = read_split(cfg, train=True)
    assert np.array_equal(fixed, x) and "decoding 24 train images" in caplog.text
    assert manifest_digest(integrity_manifest(cfg)) == digest
    # 90% / 10% of the training images, the validation images as the test set
    arrays = load_arrays(cfg)
    assert (len(arrays.train[1]), len(arrays.val[1]), len(arrays.test[1])) == (22, 2, 9)
    assert arrays.train[0].shape[1:] == (3, 64, 64) and arrays.num_classes == 3


def test_tiny_imagenet_without_its_annotations_is_refused_before_anything_starts(tmp_path):
    from rp_tune.data import Need, ensure_dataset
    from tests.helpers import write_tiny_imagenet

    folder = write_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError) as e:
        ensure_dataset(Need("tinyimagenet", str(tmp_path), False, ("test", "train"), False))
    message = str(e.value)
    assert "dataset tinyimagenet at data.root=" in message and str(tmp_path) in message
    assert "val/val_annotations.txt is missing" in message
    assert "expected there: tiny-imagenet-200/ holding wnids.txt" in message
    assert not (folder / "rp_tune_arrays" / "val_images.npy").exists()
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 1 names no class of wnids.txt"):
        ensure_dataset(Need("tinyimagenet", str(tmp_path), False, ("test",), False))
