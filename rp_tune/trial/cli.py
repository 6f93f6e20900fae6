"""`python -m rp_tune.train`: one trial without Ray, for debugging."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from rp_tune.config import ConfigError, TrialConfig, from_flat, parse_set, run_key
from rp_tune.data import DataError
from rp_tune.trial.checkpoints import latest_checkpoint, read_checkpoint
from rp_tune.trial.train import run_trial

log = logging.getLogger(__name__)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rp_tune.train",
        description="Run one sparse-training trial without Ray (for debugging).",
    )
    p.add_argument("--model", default="cifar_resnet_20")
    p.add_argument("--scheme", default="erk")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--data", default="cifar10", help="cifar10, cifar100, svhn, imagenet, synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any flat config key, e.g. --set train.batch_size=256 (repeatable)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<run_key>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    flat: dict[str, Any] = {
        "model.name": args.model,
        "sparsity.scheme": args.scheme,
        "sparsity.density": args.density,
        "data.name": args.data,
        "seed": args.seed,
    }
    if args.epochs is not None:
        flat["train.epochs"] = args.epochs
    if args.data_root is not None:
        flat["data.root"] = args.data_root
    if args.data == "imagenet":
        flat["train.recipe"] = "imagenet"
    flat.update(parse_set(args.set))
    return from_flat(flat)


def _own_checkpoint(cfg: TrialConfig, out: Path, searched: bool) -> tuple[Path, str, Path | None]:
    """(folder, run key, checkpoint) to resume `cfg` from: the newest readable checkpoint in
    `out`, or, when `out` is the default `runs/<run key>` (searched), in the `runs/` folder of
    the same trial written by a release whose run keys differed (a config field added since):
    its stored config reads as `cfg` does, so it keeps the key it was saved under.
    ConfigError naming the differing keys for a checkpoint of another config in `out`."""
    from rp_tune.config import config_differences

    prefix = run_key(cfg).rsplit("-", 1)[0]  # the readable part: model, scheme, density, seed
    others = sorted(p for p in out.parent.glob(f"{prefix}-*") if p != out) if searched else []
    candidates = [out, *others]
    for folder in candidates:
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            continue
        state = read_checkpoint(ckpt)
        if state["run_key"] == run_key(cfg):
            return folder, state["run_key"], ckpt
        differ = config_differences([state.get("config", {})], [cfg])
        if not differ:
            log.info(
                "resuming %s, saved as %s by an earlier release", run_key(cfg), state["run_key"]
            )
            return folder, state["run_key"], ckpt
        if folder == out:
            raise ConfigError(
                f"the checkpoint {ckpt} is of another trial ({state['run_key']}); these keys "
                f"differ: {', '.join(differ)}; pass another --out or drop --resume"
            )
    return out, run_key(cfg), None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    args = _parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.resources.gpus_per_worker is None:  # the sweep's rule: a GPU where there is one
        cuda = torch.cuda.is_available() if args.device is None else "cuda" in args.device
        cfg = cfg.replace(**{"resources.gpus_per_worker": 1.0 if cuda else 0.0})
    out = Path(args.out or Path("runs") / run_key(cfg))
    key, resume = run_key(cfg), None
    if args.resume:
        try:
            out, key, resume = _own_checkpoint(cfg, out, searched=args.out is None)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if resume is None:
            log.info("no checkpoint under %s: starting from scratch", out)
    try:
        result = run_trial(cfg, out, key=key, resume=resume, device=args.device)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = ("test_acc", "test_acc_best_val", "best_val_acc", "best_epoch", "achieved_density")
    print("  ".join(f"{k}={result[k]:.4g}" for k in keys if k in result))
    print(f"output: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
