"""Pre-flight: every data set a sweep needs, present and intact before anything starts."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from rp_tune.config import DataConfig
from rp_tune.core import storage
from rp_tune.data.formats import DataError
from rp_tune.data.loaders import read_split
from rp_tune.data.roots import DOWNLOAD_TIMEOUT_S, ENTRIES, _remove, dataset_error

if TYPE_CHECKING:
    from rp_tune.config import TrialConfig

log = logging.getLogger(__name__)


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
