"""Testing only: a trial that reports a known accuracy curve instead of training, so that
tests run the real searcher, Tune and the sweep's records in seconds (`run_sweep.py
--toy-trials NOISE`, refused for a space that trains on real data).

The accuracy is `rp_tune.planning.matching.toy_accuracy` of the trial's density, its
width (the model name's trailing width over 16, the CIFAR ResNets' base; 1 without one;
over 1.5 for a scheme other than ERK, whose layer-wise ratios match at lower density, as
in Liu et al.'s Fig. 2) and its seed, with seed noise NOISE: the same for the same trial,
every run.
"""

from __future__ import annotations

from typing import Any

from rp_tune.config import from_flat
from rp_tune.core.model_names import DEFAULT_WIDTH, parse_cifar_resnet
from rp_tune.planning.matching import toy_accuracy


def toy_width(model: str, scheme: str = "erk") -> float:
    """cifar_resnet_20_32 -> 2.0; cifar_resnet_8 -> 1.0; a scheme but ERK's: / 1.5."""
    depth_width = parse_cifar_resnet(model)
    width = depth_width[1] / DEFAULT_WIDTH if depth_width else 1.0
    return width / (1.0 if scheme.startswith("erk") else 1.5)


def toy_trial(key: str, flat: dict[str, Any], noise: float, group_file: str | None = None) -> None:
    """Tune function trainable body: one row per epoch (validation accuracy and a training
    loss), half a second apart (a trial a Ctrl-C can find running), the last with the final
    metrics a finished trial has (test accuracy, achieved density). A trial group
    (`group_file`: its members' entries): each member's row per epoch, named by its run
    key, as a fused group reports them."""
    import json
    import time

    from ray import tune

    from rp_tune.core import storage as store

    members = json.loads(store.read_text(group_file)) if group_file else None
    trials = members or [{"run_key": key, "flat": flat}]
    cfgs = [from_flat(m["flat"]) for m in trials]
    accs = [
        toy_accuracy(c.sparsity.density, toy_width(c.model.name, c.sparsity.scheme), c.seed, noise)
        for c in cfgs
    ]
    epochs = cfgs[0].train.epochs
    for epoch in range(1, epochs + 1):
        time.sleep(0.5)
        for m, cfg, acc in zip(trials, cfgs, accs):
            # train_loss as a real trial reports it every epoch: MLflow's record of a run
            # resumed by another driver starts after its last train_loss step
            loss = (1.0 - acc) * (1.0 + 1.0 / epoch)
            row: dict[str, Any] = {
                "run_key": m["run_key"], "epoch": epoch, "val_acc": acc, "train_loss": loss
            }  # fmt: skip
            if epoch == epochs:
                row.update(test_acc=acc, achieved_density=cfg.sparsity.density)
            if members:
                row.update(group=key, group_size=len(members))
            tune.report(row)
