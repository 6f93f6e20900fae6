"""Datasets: CIFAR-10/100 and SVHN through torchvision, image folders, and synthetic data.

Small datasets (32x32) are read once through torchvision (download under a file lock, so the
trials sharing a node fetch once) and kept as uint8 tensors on the trial's device for the whole
trial; random crop (zero pad 4), horizontal flip and the conversion to [0, 1] pixels run on
that device, batch by batch, with no DataLoader and no host sync. Normalisation is applied by
`Normalize` right before the model, so attacks (FGSM) can perturb pixels.

Image folders (ImageNet, ImageNet-O) go through torchvision `ImageFolder` + DataLoader workers.

Validation: the last `val_fraction` of the training set (CIFAR: 45k/5k), no augmentation.
Batches of an epoch are a pure function of (seed, epoch, rank), so a resumed trial sees exactly
the batches an unbroken one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from rp_tune.config import DataConfig
from rp_tune.core import storage
from rp_tune.core.seeds import derived_seed

if TYPE_CHECKING:
    from rp_tune.config import TrialConfig

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


DATA_CACHE_ENV = "RP_TUNE_DATA_CACHE"
DATA_CACHE = "~/.cache/rp_tune/data"
# What each dataset occupies inside data.root (torchvision's own layout, and image folders).
ENTRIES: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "svhn": ("train_32x32.mat", "test_32x32.mat", MANIFEST),
    "imagenet": ("imagenet",),
    "imagenet_o": ("imagenet-o",),
    "tinyimagenet": ("tiny-imagenet-200",),
}
COMPLETE = ".rp_tune-complete-{entry}"


def absolute_data_root(root: str) -> str:
    """data.root as every process reads it: relative paths resolved against this process's
    folder (Ray workers run elsewhere); `~/...` is kept, so it means each node's home, and a
    URI is kept."""
    if storage.is_uri(root) or root.startswith("~"):
        return root
    return str(Path(root).resolve())


def data_cache(root_uri: str) -> Path:
    """This node's cache folder for a remote data root: $RP_TUNE_DATA_CACHE (default
    ~/.cache/rp_tune/data) / a short hash of the URI."""
    base = Path(os.environ.get(DATA_CACHE_ENV, DATA_CACHE)).expanduser()
    tag = hashlib.sha256(root_uri.rstrip("/").encode()).hexdigest()[:12]
    return base / tag


def local_data_root(root: str, name: str) -> Path:
    """The local folder that holds dataset `name` of data.root on this node.

    A path (node-local, or a shared mount at the same path on every node) is used as it is.
    A URI (`s3://bucket/datasets`, `gs://...`, `file://...`) is a shared read-only copy: the
    first trial on each node copies the dataset's entries (`ENTRIES[name]`) into the node's
    cache (`data_cache`), holding a file lock so the other trials on that node wait and then
    reuse it; a marker file per entry says the copy completed, so a copy cut short by a
    crash is redone, never half-used. A sweep's pre-flight (`ensure_dataset`) refuses a URI
    root that lacks an entry, since nothing is downloaded into a URI; a trial run on its own
    leaves a missing entry to the dataset's loader (a download into the cache when allowed).
    """
    if not storage.is_uri(root):
        return Path(root).expanduser()
    cache = data_cache(root)
    cache.mkdir(parents=True, exist_ok=True)
    for entry in ENTRIES.get(name, ()):
        done = cache / COMPLETE.format(entry=entry)
        if done.is_file():
            continue
        with FileLock(str(cache / f".{entry}.lock")):
            if done.is_file():  # another trial on this node copied it while we waited
                continue
            source = storage.join(root, entry)
            try:
                present = storage.exists(source)
            except Exception as e:  # credentials, unknown bucket, no network
                raise DataRootUnreachable(f"data.root={root!r} cannot be read: {e}") from e
            if not present:  # the sweep's pre-flight refuses this; a lone trial may download
                log.info("%s not at %s: left to the loader", entry, source)
                continue
            target, partial = cache / entry, cache / f"{entry}.partial"
            for p in (target, partial):
                _remove(p)
            log.info("copying %s to this node's cache %s", source, target)
            storage.copy_to_local(source, partial)
            partial.rename(target)
            done.write_text(source)
    return cache


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# What a dataset must look like inside data.root, and how to get it there: every message that
# says a dataset is unusable names both.
LAYOUTS: dict[str, str] = {
    "cifar10": "cifar-10-batches-py/ holding data_batch_1..5, test_batch, batches.meta "
    "(torchvision's layout: cifar-10-python.tar.gz extracted there)",
    "cifar100": "cifar-100-python/ holding train, test, meta "
    "(torchvision's layout: cifar-100-python.tar.gz extracted there)",
    "svhn": "train_32x32.mat and test_32x32.mat (torchvision's SVHN, format 2 .mat files)",
    "imagenet": "imagenet/train/<class>/*.JPEG and imagenet/val/<class>/*.JPEG, the same "
    "class folders in both (the validation images sorted into class folders)",
    "imagenet_o": "imagenet-o/<class>/*.jpg (ImageNet-O, images in class folders)",
    "tinyimagenet": "tiny-imagenet-200/ holding wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt (tiny-imagenet-200.zip extracted there)",
}
DOWNLOADABLE = ("cifar10", "cifar100", "svhn", "tinyimagenet")  # torchvision can fetch these
DOWNLOAD_TIMEOUT_S = 30.0  # a network that drops packets fails the pre-flight this fast


def dataset_error(
    name: str,
    root: str,
    problem: str,
    *,
    download_key: str = "data.download",
    downloaded: bool = False,
    ood: bool = False,
    can_download: bool = True,
    where: str | None = None,
) -> DataError:
    """One message: which dataset, where, what is wrong, the layout expected there, the fixes.

    where: how to name the root when it is not `root` itself (a URI and this node's copy)."""
    fixes = []
    if name in DOWNLOADABLE and can_download:
        if downloaded:
            fixes.append(
                "the download failed: check this machine's network, or download it elsewhere "
                "and place it there"
            )
        else:
            fixes.append(f"--set {download_key}=true to let torchvision download it there")
    fixes.append("place the files there by hand")
    if name in ("cifar10", "cifar100") and storage.is_uri(root):
        fixes.append(
            f"build it from a folder of images (python -m rp_tune.data prepare {name} "
            f"--from-folder DIR --root LOCAL) and copy LOCAL/{ENTRIES[name][0]} to {root}"
        )
    elif name in ("cifar10", "cifar100"):
        fixes.append(
            f"build it from a folder of images: python -m rp_tune.data prepare {name} "
            f"--from-folder DIR --root {root}"
        )
    if ood and name == "imagenet_o":
        fixes.append("run without it, explicitly: --set evaluation.ood=false")
    elif ood:
        fixes.append(
            "run without it, explicitly: --set evaluation.ood_sets=gaussian "
            "(or evaluation.ood=false)"
        )
    else:
        fixes.append("point data.root at the folder that holds it")
    shown = where if where is not None else repr(root)
    return DataError(
        f"dataset {name} at data.root={shown}: {problem}\n"
        f"  expected there: {LAYOUTS.get(name, '(no fixed layout)')}\n"
        f"  to fix: " + "; or ".join(fixes)
    )


def _locked_fetch(cfg: DataConfig, fetch, download_key: str = "data.download", ood: bool = False):
    """Run fetch(root) holding a lock in the data root, turning failures into DataError."""
    root = local_data_root(cfg.root, cfg.name)
    where = f"{cfg.root} (copied to {root} on this node)" if storage.is_uri(cfg.root) else str(root)

    def error(problem: str) -> DataError:
        return dataset_error(
            cfg.name,
            cfg.root,
            problem,
            download_key=download_key,
            downloaded=cfg.download,
            ood=ood,
            where=repr(where),
        )

    if root.exists() and not root.is_dir():
        raise error("that is a file, not a folder")
    if not cfg.download and not root.is_dir():
        raise error("missing or corrupt (no such folder)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"the folder cannot be created ({e})") from e
    with FileLock(str(root / f".{cfg.name}.lock")):
        try:
            return fetch(str(root))
        except DataError:
            raise
        except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ...
            raise error(f"missing or corrupt ({type(e).__name__}: {e})") from e


def _split_train(n: int, val_fraction: float) -> tuple[slice, slice]:
    """Last val_fraction of the training set is validation (CIFAR: 45k / 5k)."""
    n_val = int(round(n * val_fraction))
    return slice(0, n - n_val), slice(n - n_val, n)


# --------------------------------------------------------------------------------------------
# What a trial trained on: the dataset's identity for trackers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Pre-flight: every dataset a sweep needs, present and intact before anything starts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """A dataset some trial reads: name, data.root, whether it may be downloaded, its splits."""

    name: str
    root: str
    download: bool
    splits: tuple[str, ...]  # "train", "test"
    ood: bool  # read as an OoD set (its download switch is evaluation.ood_download)

    @property
    def download_key(self) -> str:
        """The config key that allows downloading this dataset."""
        return "evaluation.ood_download" if self.ood else "data.download"


def needed_datasets(configs: Sequence[TrialConfig]) -> list[Need]:
    """The datasets the trials read (training sets and OoD sets), each once.

    synthetic and gaussian are generated, never read; OoD sets use their test split only.
    """
    from rp_tune.config import ood_sets

    out: dict[tuple[str, str], Need] = {}

    def add(need: Need) -> None:
        key = (need.name, need.root)
        if key in out:  # the same files: the union of splits, download if any trial allows it
            old = out[key]
            splits = tuple(sorted(set(old.splits) | set(need.splits)))
            need = Need(
                need.name, need.root, old.download or need.download, splits, old.ood and need.ood
            )
        out[key] = need

    for cfg in configs:
        d = cfg.data
        if d.name != "synthetic":
            add(Need(d.name, d.root, d.download, ("test", "train"), False))
        for name in ood_sets(cfg):
            if name == "gaussian":
                continue
            add(Need(name, d.root, cfg.evaluation.ood_download, ("test",), True))
    return list(out.values())


URI_ENTRIES = {
    "imagenet": ("imagenet/train", "imagenet/val"),
    "imagenet_o": ("imagenet-o",),
}


def ensure_dataset(need: Need) -> None:
    """Make sure `need` is present and intact at its root, downloading it once where allowed.

    Small sets are read through their real loaders (torchvision's checksums, or the manifest
    of converted files) under the node's file lock, downloading when allowed; image folders
    are checked for their class folders. A failed attempt leaves nothing behind: a root this
    call created is removed, and so is anything it added to an existing root. A URI root is
    only checked for the entries (each node copies them later; nothing is downloaded into a
    URI). Raises DataError naming the dataset, the root, the layout and the fixes.
    """
    kw = dict(download_key=need.download_key, downloaded=need.download, ood=need.ood)
    if storage.is_uri(need.root):
        if need.name in URI_ENTRIES:
            entries = URI_ENTRIES[need.name]
        elif need.name == "svhn":
            entries = tuple(f"{s}_32x32.mat" for s in need.splits)
        else:
            entries = ENTRIES[need.name]
        try:
            missing = [e for e in entries if not storage.exists(storage.join(need.root, e))]
        except Exception as e:  # credentials, unknown bucket, no network
            raise dataset_error(
                need.name, need.root, f"the root cannot be read ({e})", can_download=False, **kw
            ) from None
        if missing:
            raise dataset_error(
                need.name,
                need.root,
                f"not there: {missing} missing (a URI root is copied from, never downloaded into)",
                can_download=False,
                **kw,
            )
        return
    root = Path(need.root).expanduser()
    top = root  # the outermost folder of root's path that does not exist yet
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = root.exists()
    before = set(os.listdir(root)) if root.is_dir() else set()
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen sets none
    try:
        if need.name == "imagenet":
            train = _class_folders(need, root / "imagenet" / "train")
            val = _class_folders(need, root / "imagenet" / "val")
            if train != val:
                raise dataset_error(
                    need.name,
                    str(root),
                    f"train has {len(train)} class folders and val {len(val)}, "
                    f"{len(set(train) ^ set(val))} differ: the class indices would not match",
                    **kw,
                )
        elif need.name == "imagenet_o":
            _class_folders(need, root / "imagenet-o")
        else:
            cfg = DataConfig(name=need.name, root=str(root), download=need.download)
            for split in need.splits:
                read_split(cfg, split == "train", download_key=need.download_key, ood=need.ood)
    except DataError:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)  # root and the parents made for it
        elif root.is_dir():
            for name in set(os.listdir(root)) - before:
                _remove_unless_locked(root / name)
        raise
    finally:
        socket.setdefaulttimeout(timeout)


def _remove_unless_locked(path: Path) -> None:
    """Remove what a failed attempt left, but not a lock file another process holds now."""
    if path.suffix == ".lock":
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return
        try:
            path.unlink(missing_ok=True)
        finally:
            lock.release()
        return
    _remove(path)


def _class_folders(need: Need, path: Path) -> list[str]:
    """Sorted class folder names under `path`; DataError if none or the first holds no image."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    kw = dict(download_key=need.download_key, ood=need.ood)
    if not path.is_dir():
        raise dataset_error(need.name, need.root, f"no folder {path}", **kw)
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise dataset_error(need.name, need.root, f"no class folders in {path}", **kw)
    first = path / classes[0]
    if not any(f.name.lower().endswith(IMG_EXTENSIONS) for f in os.scandir(first)):
        raise dataset_error(need.name, need.root, f"no image files in {first}", **kw)
    return classes


def ensure_datasets(configs: Sequence[TrialConfig]) -> list[Need]:
    """ensure_dataset for every dataset the trials need; returns what was checked."""
    needs = needed_datasets(configs)
    for need in needs:
        ensure_dataset(need)
        log.info("dataset %s at %s: present (%s)", need.name, need.root, ", ".join(need.splits))
    return needs


# --------------------------------------------------------------------------------------------
# Small datasets resident on the device
# --------------------------------------------------------------------------------------------


@dataclass
class ArraySplits:
    """uint8 NCHW images and int64 labels per split, plus the class count."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    name: str

    def to(self, device: torch.device) -> ArraySplits:
        def mv(t):
            return (t[0].to(device, non_blocking=True), t[1].to(device, non_blocking=True))

        return ArraySplits(mv(self.train), mv(self.val), mv(self.test), self.num_classes, self.name)


def synthetic_arrays(
    n: int, num_classes: int, seed: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake images, uint8 NHWC: a template per class plus Gaussian noise (std 40).

    A template is a class colour (uniform in [60, 195] per channel) plus a smooth pattern (a
    random 4x4 grid upsampled to 32x32, amplitude 30): what makes a class survives random
    crops and flips, so a short run learns it. The templates depend on `seed` only, so every
    split shows the same classes; labels and noise depend on (seed, split, n).
    """
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split {split!r} is invalid; valid: 'train', 'test'")
    rng = np.random.default_rng(derived_seed(seed, "synthetic-templates", num_classes))
    colours = rng.uniform(60, 195, size=(num_classes, 1, 1, 3))
    coarse = rng.uniform(-30, 30, size=(num_classes, 4, 4, 3))
    templates = colours + coarse.repeat(8, axis=1).repeat(8, axis=2)
    rng = np.random.default_rng(derived_seed(seed, "synthetic", split, n))
    labels = rng.integers(0, num_classes, size=n)
    images = templates[labels] + rng.normal(0, 40, size=(n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def read_split(
    cfg: DataConfig,
    train: bool,
    seed: int = 0,
    *,
    download_key: str = "data.download",
    ood: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 NHWC images, int labels, number of classes) of one split of a small dataset.

    download_key / ood: how a failure message names the switch that allows the download (the
    training set's `data.download`, an OoD set's `evaluation.ood_download`)."""
    kw = dict(download_key=download_key, ood=ood)
    if cfg.name == "synthetic":
        n = cfg.synthetic_train if train else cfg.synthetic_test
        x, y = synthetic_arrays(n, cfg.classes, seed, "train" if train else "test")
        return x, y, cfg.classes
    if cfg.name in ("cifar10", "cifar100"):
        cls = _torchvision_cifar(cfg.name)
        ds = _locked_fetch(cfg, lambda root: cls(root, train=train, download=cfg.download), **kw)
        return ds.data, np.asarray(ds.targets), len(ds.classes)
    if cfg.name == "svhn":
        split = "train" if train else "test"
        svhn = _torchvision_svhn()
        ds = _locked_fetch(cfg, lambda root: svhn(root, split=split, download=cfg.download), **kw)
        return ds.data.transpose(0, 2, 3, 1), np.asarray(ds.labels), 10
    if cfg.name == "tinyimagenet":
        return _locked_fetch(cfg, lambda root: _tiny_imagenet(root, train, cfg.download), **kw)
    raise DataError(f"data.name={cfg.name!r} is not a small in-memory dataset")


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


def load_arrays(cfg: DataConfig, seed: int = 0) -> ArraySplits:
    """Read a small dataset into uint8 tensors (CPU); raises DataError before any training."""
    train_x, train_y, classes = read_split(cfg, train=True, seed=seed)
    test_x, test_y, _ = read_split(cfg, train=False, seed=seed)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(y, dtype=torch.long)

    if len(train_x) < 2:
        raise DataError(f"{cfg.name}: training set has {len(train_x)} images")
    tr_s, va_s = _split_train(len(train_x), cfg.val_fraction)
    out = ArraySplits(
        train=tensors(train_x[tr_s], train_y[tr_s]),
        val=tensors(train_x[va_s], train_y[va_s]),
        test=tensors(test_x, test_y),
        num_classes=cfg.num_classes or classes,
        name=cfg.name,
    )
    log.info(
        "%s: %d train / %d val / %d test images, %d classes",
        cfg.name,
        len(out.train[1]),
        len(out.val[1]),
        len(out.test[1]),
        out.num_classes,
    )
    return out


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 NCHW batch, on its device.

    One gather: out[b, c, i, j] = padded[b, c, i + dy_b, j + dx_b].
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols[:, None, None, :]]


class DeviceLoader:
    """Batches from tensors already on the device; order and augmentation from (seed, epoch).

    With `world > 1`, rank r takes every world-th index of the epoch's permutation (its DDP
    shard); every rank runs the same number of steps.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        n = len(labels)
        per_rank = n // world if train else len(range(rank, n, world))
        if train and per_rank < batch_size:
            raise DataError(
                f"training set shard of {per_rank} images is smaller than one batch "
                f"({batch_size}); lower train.batch_size"
            )
        self.steps = per_rank // batch_size if train else -(-per_rank // batch_size)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dev = self.images.device
        n = len(self.labels)
        if self.train:
            g = torch.Generator(device=dev).manual_seed(derived_seed(self.seed, "order", epoch))
            order = torch.randperm(n, generator=g, device=dev)[self.rank :: self.world]
            aug = torch.Generator(device=dev).manual_seed(
                derived_seed(self.seed, "augment", epoch, self.rank)
            )
        else:
            order = torch.arange(self.rank, n, self.world, device=dev)
        for i in range(self.steps):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = augment(x, aug)
            x = x.float().div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class Normalize(torch.nn.Module):
    """(x - mean) / std per channel on [0, 1] pixels: the model's input path."""

    def __init__(self, name: str) -> None:
        super().__init__()
        mean, std = STATS[name]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet, ImageNet-O)
# --------------------------------------------------------------------------------------------


def image_folder(path: str | os.PathLike, image_size: int, train: bool):
    """torchvision ImageFolder giving [0, 1] pixels (normalisation is `Normalize`)."""
    import torchvision
    from torchvision import transforms as T

    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"no image folder at {str(path)!r} (expected <class>/<image> files)")
    if train:
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor()])
    else:
        tf = T.Compose(
            [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size), T.ToTensor()]
        )
    try:
        return torchvision.datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"image folder {str(path)!r} is unusable: {e}") from e


def imagenet_loaders(
    cfg: DataConfig, batch_size: int, eval_batch: int, seed: int, rank: int = 0, world: int = 1
):
    """(train, val, test, num_classes) DataLoaders for `<root>/imagenet/{train,val}`.

    Training uses the whole training folder, as both papers do (data.val_fraction defaults to
    0 for ImageNet; val is then None). Asked for, validation is a fixed split: the last
    val_fraction of one permutation seeded by a constant, the same for every trial and seed,
    taken out of training. Test is the official validation folder. Training batches come from
    a DistributedSampler-style shard reseeded per epoch by `set_epoch`.
    """
    from torch.utils.data import DataLoader, Subset
    from torch.utils.data.distributed import DistributedSampler

    root = local_data_root(cfg.root, "imagenet") / "imagenet"
    train_full = image_folder(root / "train", cfg.image_size, train=True)
    test = image_folder(root / "val", cfg.image_size, train=False)
    train_set: Any = train_full
    val_set = None
    if cfg.val_fraction > 0:
        train_eval = image_folder(root / "train", cfg.image_size, train=False)
        perm = np.random.default_rng(derived_seed("imagenet-val-split")).permutation(
            len(train_full)
        )
        tr_s, va_s = _split_train(len(perm), cfg.val_fraction)
        train_set, val_set = Subset(train_full, perm[tr_s]), Subset(train_eval, perm[va_s])
    sampler = DistributedSampler(
        train_set,
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=derived_seed(seed, "order") % (2**31),
        drop_last=True,
    )
    kw = dict(
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
    )
    train = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True, **kw)
    val = DataLoader(val_set, eval_batch, shuffle=False, **kw) if val_set is not None else None
    tst = DataLoader(test, eval_batch, shuffle=False, **kw)
    return train, val, tst, cfg.num_classes or len(train_full.classes)


# --------------------------------------------------------------------------------------------
# Offline preparation: CIFAR from a folder of images; `python -m rp_tune.data`
# --------------------------------------------------------------------------------------------

PREPARE_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _read_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC images, labels and class names of `folder/<class>/<image>`; the class index
    is the alphabetical order of the folder names (CIFAR-10's own order: airplane 0 ...)."""
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"no folder {folder} (expected <class>/<image> files in it)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {folder} (expected <class>/<image> files)")
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {folder / name} holds no images ({IMAGE_SUFFIXES})")
        for path in files:
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except OSError as e:
                raise DataError(f"{path} is not a readable image: {e}") from None
            if arr.shape != (32, 32, 3):
                raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[0]}; CIFAR images are 32x32")
            images.append(arr)
            labels.append(index)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def prepare_from_folder(
    kind: str, source: str | os.PathLike, root: str | os.PathLike, seed: int = 0
) -> Path:
    """Write CIFAR-10/100 in torchvision's on-disk layout under `root` from a folder of images
    (`source/train/<class>/*.jpg`, `source/test/<class>/*.jpg`), with the checksum manifest
    the loader checks. The training images are written in an order shuffled by `seed`, as
    CIFAR's own files are, so that the validation split (the last 10%) holds every class.
    Returns the dataset folder. Refuses to overwrite an existing dataset folder.
    """
    if kind not in PREPARE_CLASSES:
        raise DataError(f"prepare: dataset {kind!r} is not one of {list(PREPARE_CLASSES)}")
    source, root = Path(source).expanduser(), Path(root).expanduser()
    target = root / ENTRIES[kind][0]
    if target.exists():
        raise DataError(f"{target} exists already; remove it first or pick another --root")
    train = _read_image_folder(source / "train")
    test = _read_image_folder(source / "test")
    if train[2] != test[2]:
        raise DataError(
            f"train and test class folders differ: {sorted(set(train[2]) ^ set(test[2]))}"
        )
    if len(train[2]) != PREPARE_CLASSES[kind]:
        raise DataError(
            f"{kind} has {PREPARE_CLASSES[kind]} classes; {source / 'train'} holds "
            f"{len(train[2])} class folders"
        )
    order = np.random.default_rng(derived_seed(seed, "prepare", kind)).permutation(len(train[1]))
    partial = root / f".{ENTRIES[kind][0]}.partial"
    _remove(partial)
    written = write_cifar_batches(
        partial, (train[0][order], train[1][order]), test[:2], train[2], kind=kind
    )
    written.rename(target)  # complete or absent, never half-written
    partial.rmdir()
    log.info(
        "%s: %d training and %d test images from %s written to %s",
        kind,
        len(train[1]),
        len(test[1]),
        source,
        target,
    )
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m rp_tune.data prepare cifar10 --from-folder DIR --root ROOT` builds CIFAR from
    images; `python -m rp_tune.data check NAME --root ROOT` says whether a dataset is usable."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m rp_tune.data", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build CIFAR-10/100 from a folder of images")
    prep.add_argument("name", choices=list(PREPARE_CLASSES))
    prep.add_argument(
        "--from-folder", required=True, help="holds train/<class>/*.jpg and test/<class>/*.jpg"
    )
    prep.add_argument("--root", required=True, help="the data.root to write into")
    prep.add_argument("--seed", type=int, default=0, help="order of the training images")
    check = sub.add_parser("check", help="is a dataset present and intact at a root?")
    check.add_argument("name", choices=list(LAYOUTS))
    check.add_argument("--root", required=True)
    check.add_argument("--download", action="store_true", help="download it if absent")
    check.add_argument(
        "--test-only", action="store_true", help="only the test split (an OoD set's use)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "prepare":
            folder = prepare_from_folder(args.name, args.from_folder, args.root, args.seed)
            ensure_dataset(Need(args.name, args.root, False, ("test", "train"), False))
            print(f"{args.name} written to {folder}; use --set data.root={args.root}")
        else:
            splits = ("test",) if args.test_only else ("test", "train")
            ensure_dataset(Need(args.name, args.root, args.download, splits, args.test_only))
            print(f"{args.name} at {args.root}: present and intact")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
