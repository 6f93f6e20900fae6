"""The CUDA path of a trial: bf16 autocast, channels_last, torch.compile, DDP on one GPU.

Marked `gpu`: skipped (with the reason) where CUDA is absent, run wherever it is present.
Each checks what only a GPU can show and that the science holds there: pruned weights stay
exactly zero, the loss falls, masks are the ones the CPU draws.
"""

import pytest
import torch

from rp_tune.config import from_flat
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.checkpoints import checkpoint_masks_file, latest_checkpoint
from rp_tune.trial.train import run_trial

pytestmark = pytest.mark.gpu


def _cfg(**over):
    flat = {
        "model.name": "cifar_resnet_20",
        "data.name": "synthetic",
        "data.synthetic_train": 2048,
        "data.synthetic_test": 512,
        "train.epochs": 3,
        "train.batch_size": 128,
        "train.lr": 0.05,
        "sparsity.scheme": "erk",
        "sparsity.density": 0.1,
        "resources.gpus_per_worker": 1,
    }
    flat.update(over)
    return from_flat(flat)


def _pruned_are_zero(folder):
    ckpt = latest_checkpoint(folder)
    state = torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")["model"]
    masks = Masks.load(checkpoint_masks_file(ckpt))
    for name, m in masks.masks.items():
        w = state[f"{name}.weight"]
        assert torch.all(w[~m] == 0), name
    return masks


def test_bf16_channels_last_trial_trains_and_keeps_masks(tmp_path):
    cfg = _cfg()  # precision auto = bf16 on CUDA, channels_last on by default
    result = run_trial(cfg, tmp_path / "gpu", device="cuda")
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    assert result["achieved_density"] == pytest.approx(0.1, abs=1e-5)
    masks = _pruned_are_zero(tmp_path / "gpu")
    # masks are a function of (seed, layer, count): the same as a CPU trial draws
    cpu = run_trial(cfg.replace(**{"train.epochs": 1}), tmp_path / "cpu", device="cpu")
    assert cpu["achieved_density"] == result["achieved_density"]
    assert Masks.load(tmp_path / "cpu" / "masks.parquet").equals(masks)


def test_fp32_on_cuda_matches_the_cpu_closely():
    """One epoch in fp32: CUDA and CPU kernels differ in summation order only."""
    cfg = _cfg(**{"train.epochs": 1, "train.precision": "fp32", "train.deterministic": True})
    import tempfile

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        gpu = run_trial(cfg, a, device="cuda")["train_loss"]
        cpu = run_trial(cfg, b, device="cpu")["train_loss"]
    assert gpu == pytest.approx(cpu, rel=2e-2)


def test_compiled_trial_trains_and_keeps_masks(tmp_path):
    cfg = _cfg(**{"train.compile": True, "train.epochs": 2})
    result = run_trial(cfg, tmp_path, device="cuda")
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    _pruned_are_zero(tmp_path)


def test_dynamic_sparse_training_on_cuda_keeps_exact_counts(tmp_path):
    cfg = _cfg(**{"sparsity.mode": "dynamic", "sparsity.update_frequency": 4})
    result = run_trial(cfg, tmp_path, device="cuda")
    assert all(h["dst_changed"] > 0 for h in result["history"][:2])
    masks = _pruned_are_zero(tmp_path)
    initial = Masks.load(tmp_path / "masks.parquet")
    assert masks.kept() == initial.kept() and not masks.equals(initial)


def _ddp_rank(rank, world, init, out, flat):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        models = []

        def wrap(m):
            models.append(m)
            return DistributedDataParallel(m, device_ids=[0])

        run_trial(from_flat(flat), f"{out}/rank{rank}", device="cuda:0", wrap_model=wrap)
        state = {k: v.detach().cpu() for k, v in models[0].state_dict().items()}
        torch.save(state, f"{out}/weights{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_with_two_ranks_on_one_gpu(tmp_path):
    """Two DDP ranks (gloo, which allows two ranks per device; NCCL refuses) on cuda:0, each
    on its own shard, train one model: both end with the same weights (gradients averaged),
    pruned entries exactly zero."""
    import torch.multiprocessing as mp

    flat = {**_cfg(**{"train.epochs": 1}).to_flat()}
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_ddp_rank, args=(2, init, str(tmp_path), flat), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"weights{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _pruned_are_zero(tmp_path / "rank0")


def test_a_fused_trial_group_on_cuda_trains_each_member_like_alone(tmp_path):
    """bf16 + channels_last group of 3 (one bmm classifier, grouped convs): each member's loss
    falls, its pruned weights stay exactly zero, its masks are the ones it draws alone; in
    fp32 the members' first epoch matches each trial alone (kernels sum in other orders)."""
    from rp_tune.trial.fused import run_group

    cfgs = [_cfg(**{"seed": s, "sparsity.density": d}) for s, d in ((0, 0.1), (1, 0.3), (2, 0.5))]
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    results = run_group(cfgs, dirs, device="cuda")
    for cfg, folder, res in zip(cfgs, dirs, results):
        losses = [h["train_loss"] for h in res["history"]]
        assert losses[-1] < losses[0] and res["group_size"] == 3
        masks = _pruned_are_zero(folder)
        assert res["achieved_density"] == pytest.approx(cfg.sparsity.density, abs=1e-3)
        alone = run_trial(cfg.replace(**{"train.epochs": 1}), tmp_path / "a", device="cpu")
        assert Masks.load(tmp_path / "a" / "masks.parquet").equals(masks)
        assert alone["achieved_density"] == res["achieved_density"]
    fp32 = [c.replace(**{"train.epochs": 1, "train.precision": "fp32"}) for c in cfgs]
    group = run_group(fp32, [tmp_path / f"f{i}" for i in range(3)], device="cuda")
    for cfg, res in zip(fp32, group):
        alone = run_trial(cfg, tmp_path / f"s{cfg.seed}", device="cuda")
        assert res["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-2)
