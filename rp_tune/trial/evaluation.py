"""Evaluating a model: loss, accuracy and ECE over a loader (summed across DDP ranks), the
logits of a whole loader, and the OoD sets' images read at setup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rp_tune.config import TrialConfig, ood_sets
from rp_tune.core.model_names import input_size
from rp_tune.core.seeds import derived_seed
from rp_tune.data import STATS, DeviceLoader, image_folder, local_data_root, read_split
from rp_tune.trial import metrics


def batches(loader: Any, epoch: int, device: torch.device, resident: bool):
    if resident:
        yield from loader.epoch(epoch)
        return
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    normalize: nn.Module,
    loader: Any,
    device: torch.device,
    resident: bool,
    autocast,
    with_ece: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy, accuracy (summed across DDP ranks) and, if asked, this rank's ECE."""
    model.eval()
    stats = torch.zeros(3, device=device, dtype=torch.float64)
    outs = []
    for x, y in batches(loader, 0, device, resident) if loader is not None else ():
        with autocast():
            logits = model(normalize(x))
        logits = logits.float()
        stats[0] += F.cross_entropy(logits, y, reduction="sum").double()
        stats[1] += (logits.argmax(1) == y).sum()
        stats[2] += len(y)
        if with_ece:
            outs.append((logits, y))
    loss, correct, n = all_sum(stats).tolist()
    out = {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "n": int(n)}
    if with_ece and outs:
        out["ece"] = metrics.ece(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))
    return out


def loader_logits(model, normalize, loader, device, resident, autocast):
    """Logits and labels over a whole loader (eval mode, no grad), on the device."""
    model.eval()
    outs, labels = [], []
    with torch.no_grad():
        for x, y in batches(loader, 0, device, resident):
            with autocast():
                outs.append(model(normalize(x)).float())
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def ood_sources(cfg: TrialConfig) -> dict[str, Any]:
    """The OoD sets' test images, read at setup so a missing set fails the trial before it
    trains (DataError); uint8 NCHW on the CPU for small sets, an ImageFolder for ImageNet-O,
    None for Gaussian noise (made at the end). Which sets: `config.ood_sets`."""
    ev, out = cfg.evaluation, {}
    for name in ood_sets(cfg):
        if name == "gaussian":
            out[name] = None
        elif name == "imagenet_o":
            out[name] = image_folder(
                local_data_root(cfg.data.root, "imagenet_o") / "imagenet-o",
                cfg.data.image_size,
                train=False,
            )
        else:
            dcfg = dataclasses.replace(cfg.data, name=name, download=ev.ood_download, num_classes=0)
            key = "evaluation.ood_download"
            x, _, _ = read_split(dcfg, train=False, download_key=key, ood=True)
            out[name] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return out


def ood_loader(name: str, source: Any, cfg: TrialConfig, n_in: int, device: torch.device):
    """(loader, resident) over an OoD set's images as [0, 1] pixels."""
    e_bs = cfg.evaluation.batch_size
    if name == "gaussian":  # CIFAR-10's statistics (Liu et al.), Tiny ImageNet's own at 64x64
        mean, std = STATS["tinyimagenet" if cfg.data.name == "tinyimagenet" else "cifar10"]
        g = torch.Generator().manual_seed(derived_seed(cfg.seed, "gaussian-ood"))
        noise = metrics.gaussian_noise_images(n_in, mean, std, g, size=input_size(cfg)[0])
        source = (noise * 255).round().to(torch.uint8)
    if isinstance(source, torch.Tensor):
        labels = torch.zeros(len(source), dtype=torch.long, device=device)
        return DeviceLoader(source.to(device), labels, e_bs, train=False), True
    from torch.utils.data import DataLoader

    return DataLoader(source, e_bs, num_workers=cfg.data.num_workers), False
