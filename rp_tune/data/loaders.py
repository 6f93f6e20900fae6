"""Loading: small data sets as uint8 tensors resident on the trial's device, batched and
augmented there from (seed, epoch); image folders through torchvision's ImageFolder and
DataLoader workers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rp_tune.config import DataConfig
from rp_tune.core.seeds import derived_seed
from rp_tune.data.formats import (
    STATS,
    DataError,
    _tiny_imagenet,
    _torchvision_cifar,
    _torchvision_svhn,
)
from rp_tune.data.roots import _locked_fetch, local_data_root

log = logging.getLogger(__name__)


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


def _split_train(n: int, val_fraction: float) -> tuple[slice, slice]:
    """Last val_fraction of the training set is validation (CIFAR: 45k / 5k)."""
    n_val = int(round(n * val_fraction))
    return slice(0, n - n_val), slice(n - n_val, n)


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
