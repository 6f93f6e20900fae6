"""The data sets' files as they lie on disk: CIFAR's pickled batches, SVHN's .mat files,
Tiny ImageNet's JPEG tree, through torchvision's readers (which also accept rp_tune's own
checksum manifest, for converted files and test fixtures); the writers tests and `prepare`
use; the errors every data module raises."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
MANIFEST = "rp_tune_checksums.json"


class DataError(RuntimeError):
    """A dataset is missing, corrupt or cannot be downloaded; raised before training starts."""


class DataRootUnreachable(OSError):
    """A URI data root could not be read (network, credentials): maybe passing, so a trial
    that meets it is retried like any crash, unlike a DataError."""


# --------------------------------------------------------------------------------------------
# On-disk formats
# --------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_cifar_batches(
    root: str | os.PathLike,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    kind: str = "cifar10",
) -> Path:
    """Write uint8 NHWC arrays in CIFAR's pickled-batch format under `root`.

    CIFAR-10: `cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`; CIFAR-100:
    `cifar-100-python/train, test, meta`. Also writes a checksum manifest, so files that are
    not torchvision's originals (converted JPEGs, test fixtures) are still checked for damage.
    """
    root = Path(root)
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def rows(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise ValueError(f"images must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
        return x.transpose(0, 3, 1, 2).reshape(len(x), -1)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)

    label_key = "labels" if kind == "cifar10" else "fine_labels"
    if kind == "cifar10":
        parts = np.array_split(np.arange(len(train[0])), 5)
        for i, idx in enumerate(parts, 1):
            dump(
                f"data_batch_{i}",
                {"data": rows(train[0][idx]), label_key: [int(v) for v in train[1][idx]]},
            )
        dump("test_batch", {"data": rows(test[0]), label_key: [int(v) for v in test[1]]})
        dump("batches.meta", {"label_names": list(classes)})
    else:
        dump("train", {"data": rows(train[0]), label_key: [int(v) for v in train[1]]})
        dump("test", {"data": rows(test[0]), label_key: [int(v) for v in test[1]]})
        dump("meta", {"fine_label_names": list(classes)})
    sums = {p.name: _md5(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(sums, indent=1))
    return folder


def _torchvision_cifar(kind: str):
    import torchvision

    base = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100

    class Cifar(base):  # type: ignore[misc, valid-type]
        """torchvision's loader; integrity also accepts rp_tune's own checksum manifest."""

        def _check_integrity(self) -> bool:
            if super()._check_integrity():
                return True
            manifest = Path(self.root) / self.base_folder / MANIFEST
            if not manifest.is_file():
                return False
            sums = json.loads(manifest.read_text())
            names = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            folder = Path(self.root) / self.base_folder
            return all((folder / n).is_file() and sums.get(n) == _md5(folder / n) for n in names)

        def _load_meta(self) -> None:
            folder = Path(self.root) / self.base_folder
            with open(folder / self.meta["filename"], "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Cifar


def write_svhn_split(
    root: str | os.PathLike, split: str, images: np.ndarray, labels: np.ndarray
) -> Path:
    """Write uint8 NHWC images and labels 0..9 as SVHN's `<split>_32x32.mat` (format 2) in
    `root`, and its md5 in the root's checksum manifest, which the loader accepts besides
    torchvision's own checksums (for converted files and test fixtures)."""
    from scipy.io import savemat

    if split not in ("train", "test", "extra"):
        raise ValueError(f"SVHN split {split!r} is invalid; valid: 'train', 'test', 'extra'")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{split}_32x32.mat"
    y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": np.where(y == 0, 10, y)})
    manifest = root / MANIFEST
    sums = json.loads(manifest.read_text()) if manifest.is_file() else {}
    sums[path.name] = _md5(path)
    manifest.write_text(json.dumps(sums, indent=1))
    return path


def _torchvision_svhn():
    import torchvision

    class SVHN(torchvision.datasets.SVHN):
        """torchvision's loader; integrity also accepts rp_tune's checksum manifest."""

        def _check_integrity(self) -> bool:
            if super()._check_integrity():
                return True
            manifest = Path(self.root) / MANIFEST
            path = Path(self.root) / self.filename
            if not (manifest.is_file() and path.is_file()):
                return False
            return json.loads(manifest.read_text()).get(self.filename) == _md5(path)

    return SVHN


TINY = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_CACHE = "rp_tune_arrays"  # tiny-imagenet-200/rp_tune_arrays/: decoded splits, manifest


def _tiny_imagenet(root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 NHWC 64x64 images, labels, classes) of one split of Tiny ImageNet in its usual
    layout (`LAYOUTS`), downloaded (the official zip, md5 checked) where allowed.

    Classes are the lines of wnids.txt in order (class i = line i); training images are
    train/<wnid>/images/*; the labelled validation images (val/images/*, classes from
    val/val_annotations.txt) are the test set here, since the official test split has no
    labels, and validation is the last data.val_fraction of the training set, as for CIFAR.
    The first read decodes the JPEGs and caches the arrays in tiny-imagenet-200/rp_tune_arrays/
    under a manifest of their md5s and of the source files' names, classes and sizes; later
    reads load the arrays when both still match, so a changed or damaged copy is decoded again.
    """
    folder = Path(root) / TINY
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(f"no {TINY}/ folder in {root}")
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_URL, root, md5=TINY_MD5)
    wnids, samples = _tiny_listing(folder, train)
    split = "train" if train else "val"
    x, y = _tiny_arrays(folder, split, samples)
    return x, y, len(wnids)


def _tiny_listing(folder: Path, train: bool) -> tuple[list[str], list[tuple[Path, int]]]:
    """wnids.txt's classes and (image, class) of one split; FileNotFoundError / ValueError
    naming what is missing or wrong."""
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"{TINY}/wnids.txt is missing (the class ids, one per line)")
    wnids = [ln.strip() for ln in wnids_file.read_text().splitlines() if ln.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    samples: list[tuple[Path, int]] = []
    if train:
        for w in wnids:
            d = folder / "train" / w / "images"
            files = sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []
            if not files:
                raise FileNotFoundError(f"{TINY}/train/{w}/images/ is missing or empty")
            samples += [(p, index[w]) for p in files]
        return wnids, samples
    ann = folder / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(
            f"{TINY}/val/val_annotations.txt is missing (it holds the validation images' classes)"
        )
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise ValueError(
                f"val/val_annotations.txt line {n} names no class of wnids.txt: {line!r}"
            )
        image = folder / "val" / "images" / parts[0]
        if not image.is_file():
            raise FileNotFoundError(f"{TINY}/val/images/{parts[0]} (annotations line {n})")
        samples.append((image, index[parts[1]]))
    if not samples:
        raise ValueError("val/val_annotations.txt lists no image")
    return wnids, samples


def _tiny_arrays(
    folder: Path, split: str, samples: list[tuple[Path, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The split's arrays from the cache where its manifest still matches, else decoded from
    the JPEGs (64x64 RGB each, grayscale ones converted) and cached, written atomically."""
    from PIL import Image

    cache = folder / TINY_CACHE
    listing = hashlib.sha256(
        "\n".join(f"{p.relative_to(folder)}\t{c}\t{p.stat().st_size}" for p, c in samples).encode()
    ).hexdigest()
    manifest = cache / MANIFEST
    sums = json.loads(manifest.read_text()) if manifest.is_file() else {}
    paths = (cache / f"{split}_images.npy", cache / f"{split}_labels.npy")
    if sums.get(f"{split}_sources") == listing and all(
        p.is_file() and sums.get(p.name) == _md5(p) for p in paths
    ):
        return np.load(paths[0]), np.load(paths[1])
    log.info("Tiny ImageNet: decoding %d %s images once into %s", len(samples), split, cache)
    images = np.empty((len(samples), 64, 64, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as im:
            if im.size != (64, 64):
                raise ValueError(
                    f"{path.relative_to(folder)} is {im.size[0]}x{im.size[1]}, not 64x64"
                )
            images[i] = np.asarray(im.convert("RGB"))
    labels = np.array([c for _, c in samples], dtype=np.int64)
    cache.mkdir(exist_ok=True)
    for path, array in zip(paths, (images, labels)):
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as f:
            np.save(f, array)
        partial.replace(path)
        sums[path.name] = _md5(path)
    sums[f"{split}_sources"] = listing
    partial = manifest.with_suffix(".partial")
    partial.write_text(json.dumps(sums, indent=1, sort_keys=True))
    partial.replace(manifest)
    return images, labels
