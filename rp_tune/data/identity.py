"""What a trial trained on, for trackers: the integrity manifest the loader checked, its digest,
the split sizes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rp_tune.config import DataConfig
from rp_tune.data.formats import (
    MANIFEST,
    TINY,
    TINY_CACHE,
    DataError,
    _torchvision_cifar,
    _torchvision_svhn,
)
from rp_tune.data.roots import ENTRIES, local_data_root


def integrity_manifest(cfg: DataConfig, seed: int = 0) -> dict[str, str]:
    """{file: checksum} the loader verifies the dataset against, without hashing anything again.

    CIFAR/SVHN: rp_tune's checksum manifest where the files were converted (`prepare`, test
    fixtures; the loader checks that one), else torchvision's own md5 constants (the loader
    checked the files against them). Image folders: the sorted relative paths with their
    classes (md5 of 1.28M ImageNet files would cost minutes per trial; a listing, seconds).
    Tiny ImageNet: the md5s of its decoded arrays and the digest of their sources. Synthetic
    data: the parameters that generate it (data seed, sizes, classes).
    """
    name = cfg.name
    if name == "synthetic":
        return {
            "synthetic": f"seed={seed},train={cfg.synthetic_train},"
            f"test={cfg.synthetic_test},classes={cfg.classes}"
        }
    if name in ("cifar10", "cifar100"):
        cls = _torchvision_cifar(name)
        folder = local_data_root(cfg.root, name) / cls.base_folder
        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        return _manifest_or(folder / MANIFEST, dict(files))
    if name == "svhn":
        svhn = _torchvision_svhn()
        root = local_data_root(cfg.root, name)
        return _manifest_or(
            root / MANIFEST,
            {
                f: md5
                for _, f, md5 in svhn.split_list.values()
                if f in ("train_32x32.mat", "test_32x32.mat")
            },
        )
    if name == "tinyimagenet":  # the decoded arrays' md5s and the sources they came from
        path = local_data_root(cfg.root, name) / TINY / TINY_CACHE / MANIFEST
        return dict(sorted(json.loads(path.read_text()).items())) if path.is_file() else {}
    if name in ("imagenet", "imagenet_o"):
        top = local_data_root(cfg.root, name) / ENTRIES[name][0]
        return {str(p.relative_to(top)): p.parent.name for p in sorted(top.rglob("*.*"))}
    raise DataError(f"data.name={name!r} has no integrity manifest")


def _manifest_or(path: Path, torchvision_sums: dict[str, str]) -> dict[str, str]:
    """rp_tune's manifest, restricted to the dataset's files, where it exists; else
    torchvision's checksums."""
    if not path.is_file():
        return dict(sorted(torchvision_sums.items()))
    sums = json.loads(path.read_text())
    return {k: sums[k] for k in sorted(torchvision_sums) if k in sums}


def manifest_digest(manifest: dict[str, str]) -> str:
    """32 hex digits of sha256 over the sorted (file, checksum) pairs: equal manifests, equal
    digests (MLflow keeps at most 36 characters of a dataset digest)."""
    text = json.dumps(sorted(manifest.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def dataset_record(
    cfg: DataConfig, seed: int, sizes: dict[str, int], num_classes: int
) -> dict[str, Any]:
    """What a trial trained on, for trackers: name, where it was read, the digest of its
    integrity manifest, split sizes (train/val/test examples) and classes."""
    return {
        "name": cfg.name,
        "source": "generated" if cfg.name == "synthetic" else str(cfg.root),
        "digest": manifest_digest(integrity_manifest(cfg, seed)),
        **{f"{split}_examples": int(n) for split, n in sizes.items()},
        "num_classes": int(num_classes),
    }
