"""Where a data set lives: data.root (a path, or a URI copied once per node into a cache under a
file lock), the layout expected there, and one message that names both when it is unusable."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from filelock import FileLock

from rp_tune.config import DataConfig
from rp_tune.core import storage
from rp_tune.data.formats import MANIFEST, DataError, DataRootUnreachable

log = logging.getLogger(__name__)

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
