"""Offline preparation: CIFAR from a folder of images; `python -m rp_tune.data`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rp_tune.core.seeds import derived_seed
from rp_tune.data.formats import DataError, write_cifar_batches
from rp_tune.data.preflight import Need, ensure_dataset
from rp_tune.data.roots import ENTRIES, LAYOUTS, _remove

log = logging.getLogger(__name__)

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
