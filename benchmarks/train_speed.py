"""Training throughput: rp_tune's trial loop vs a loop written the way the papers' code trains.

    python benchmarks/train_speed.py --model cifar_resnet_20 --density 0.1 \
        [--data cifar10 --data-root DIR | --data synthetic] [--copies 8]

Same model, same masks, same data, same machine, one run:
- ours: `rp_tune.trial.train.run_trial` (data resident on the device as uint8, crop/flip on the
  device, bf16 autocast + channels_last on CUDA, one fused mask multiply per step, one host
  sync per epoch); images/s of its last epoch (the first one warms up cudnn and allocators).
- reference: torchvision-style Dataset of PIL images with RandomCrop(32, 4) + flip + ToTensor +
  Normalize in DataLoader workers, fp32, `loss.item()` every step, a Python loop of
  `w.data *= mask` after each optimizer step (Random_Pruning's `--fix` path).
- packed (`--copies N`): N copies of our loop as separate processes sharing the device; prints
  the sum of their last-epoch images/s against one copy's.

Prints numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rp_tune.config import from_flat  # noqa: E402
from rp_tune.data import STATS, load_arrays  # noqa: E402
from rp_tune.models import build_model, layer_specs  # noqa: E402
from rp_tune.sparsity import layer_densities  # noqa: E402
from rp_tune.sparsity.masks import Masks  # noqa: E402
from rp_tune.trial.train import run_trial  # noqa: E402


def make_cfg(args: argparse.Namespace, epochs: int):
    flat = {
        "model.name": args.model,
        "sparsity.scheme": args.scheme,
        "sparsity.density": args.density,
        "data.name": args.data,
        "train.epochs": epochs,
        "train.batch_size": args.batch_size,
        "data.download": False,
        "data.synthetic_train": args.train_size,
        "data.synthetic_test": 1000,
        "resources.gpus_per_worker": 1.0 if torch.cuda.is_available() else 0.0,
        "train.compile": args.compile,
    }
    if args.data_root:
        flat["data.root"] = args.data_root
    return from_flat(flat)


def ours(args: argparse.Namespace) -> float:
    return ours_run(args)["history"][-1]["images_per_second"]


def ours_run(args: argparse.Namespace) -> dict:
    cfg = make_cfg(args, args.epochs)
    with tempfile.TemporaryDirectory() as out:
        return run_trial(cfg, out)


def eval_overhead(result: dict, epochs: int = 160) -> float:
    """Share of a full trial spent evaluating: (E * val + final) / (E * (train + val) + final),
    with E = 160 epochs and per-epoch times from the measured (last) epoch."""
    last = result["history"][-1]
    train, val, final = last["epoch_seconds"], last["val_seconds"], last["final_eval_seconds"]
    return (epochs * val + final) / (epochs * (train + val) + final)


def reference(args: argparse.Namespace) -> float:
    """The papers' way: PIL transforms in DataLoader workers, fp32, per-layer mask multiply."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    cfg = make_cfg(args, 1)
    arrays = load_arrays(cfg.data, cfg.seed)
    images = arrays.train[0].permute(0, 2, 3, 1).numpy()  # NHWC uint8, as CIFAR10.data
    labels = arrays.train[1].tolist()
    mean, std = STATS[cfg.data.name]
    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )

    class PilSet(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i):
            return tf(Image.fromarray(images[i])), labels[i]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model.name, arrays.num_classes).to(device)
    plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
    masks = Masks.random(plan, cfg.seed)  # the same masks as ours (same seed and names)
    named = dict(model.named_modules())
    pairs = [(named[n].weight, m.to(device).float()) for n, m in masks.masks.items()]
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    loader = DataLoader(
        PilSet(),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    rate = 0.0
    for _epoch in range(args.epochs):
        model.train()
        n, t0 = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for w, m in pairs:
                w.data *= m
            loss.item()  # the reference logs the loss every step
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t0)
    return rate


def packed(args: argparse.Namespace) -> list[float]:
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):  # drop "--copies N" / "--copies=N"
        if a == "--copies":
            del argv[i : i + 2]
            break
        if a.startswith("--copies="):
            del argv[i]
            break
    cmd = [sys.executable, __file__, "--worker", *argv]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(args.copies)
    ]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        rates.append(json.loads(out.strip().splitlines()[-1])["ours"])
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet_20")
    p.add_argument("--scheme", default="erk")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--train-size", type=int, default=50_000, help="synthetic images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    p.add_argument("--copies", type=int, default=0, help="also run N packed copies of ours")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps({"ours": ours(args)}))
        return
    dev = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    )
    print(
        f"device: {dev}  torch {torch.__version__}  cpus {os.cpu_count()}  model "
        f"{args.model}  density {args.density}  batch {args.batch_size}  data {args.data}"
    )
    run = ours_run(args)
    a = run["history"][-1]["images_per_second"]
    b = reference(args)
    print(f"ours       {a:10.0f} images/s")
    print(f"reference  {b:10.0f} images/s")
    print(f"ratio      {a / b:10.2f}x")
    last = run["history"][-1]
    print(
        f"evaluation: validation {last['val_seconds']:.2f}s per epoch, end-of-trial metrics "
        f"(test, best-val, FGSM, OoD, FLOPs) {last['final_eval_seconds']:.2f}s; share of a "
        f"160-epoch trial: {100 * eval_overhead(run):.1f}%"
    )
    if args.copies > 1:
        rates = packed(args)
        print(
            f"packed x{args.copies}  {sum(rates):10.0f} images/s aggregate "
            f"({sum(rates) / a:.2f}x one copy; per copy {[round(r) for r in rates]})"
        )


if __name__ == "__main__":
    main()
