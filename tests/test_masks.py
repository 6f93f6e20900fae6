from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from rp_tune.models import build_model, layer_specs, prunable_layers
from rp_tune.sparsity import LayerSpec, layer_densities
from rp_tune.sparsity.masks import Masks, density_report, format_report, random_mask, report_table


def _masks(model_name="cifar_resnet_20", density=0.1, seed=0, scheme="erk"):
    model = build_model(model_name)
    plan = layer_densities(scheme, layer_specs(model), density)
    return model, plan, Masks.random(plan, seed)


def test_exact_counts():
    _, plan, masks = _masks()
    kept = masks.kept()
    for layer, k in zip(plan.layers, plan.kept):
        assert kept[layer.name] == k
        assert masks.masks[layer.name].shape == layer.shape
    assert sum(kept.values()) == round(0.1 * 270_896)


def test_same_seed_same_masks_other_seed_differs():
    _, _, a = _masks(seed=3)
    _, _, b = _masks(seed=3)
    _, _, c = _masks(seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_other_layers_unchanged_when_layer_set_changes():
    specs = [LayerSpec("a", (8, 4, 3, 3)), LayerSpec("b", (16, 8, 3, 3)), LayerSpec("c", (10, 16))]
    plan = layer_densities("uniform", specs, 0.25)
    fewer = layer_densities("uniform", specs[1:], 0.25)
    full, part = Masks.random(plan, 7), Masks.random(fewer, 7)
    assert torch.equal(full.masks["b"], part.masks["b"])
    assert torch.equal(full.masks["c"], part.masks["c"])
    # and the mask of a layer depends on its name, not its position
    assert not torch.equal(
        random_mask((16, 8, 3, 3), 288, 7, "b"), random_mask((16, 8, 3, 3), 288, 7, "x")
    )


def test_apply_zeroes_exactly_the_pruned_weights():
    model, _, masks = _masks()
    masks.apply_(model)
    for name, module in prunable_layers(model):
        m = masks.masks[name]
        assert torch.all(module.weight[~m] == 0)
        assert torch.all(module.weight[m] != 0)  # kaiming normal: zero has probability 0


def test_parquet_round_trip_exact(tmp_path):
    model, _, masks = _masks(density=0.05, scheme="pyramidal")
    path = masks.save(tmp_path / "masks.parquet")
    back = Masks.load(path, model)
    assert back.equals(masks)
    assert back.meta["scheme"] == "pyramidal"
    table = pq.read_table(path)
    assert table.num_rows == len(masks)
    assert set(table.column_names) >= {"name", "shape", "density", "kept", "bits", "sha256"}
    # packed bits: about one bit per weight
    assert sum(len(b) for b in table.column("bits").to_pylist()) == sum(
        (m.numel() + 7) // 8 for m in masks.masks.values()
    )


def test_load_into_wrong_model_fails_clearly(tmp_path):
    _, _, masks = _masks()
    path = masks.save(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="masks do not fit this model"):
        Masks.load(path, build_model("cifar_resnet_32"))
    with pytest.raises(
        ValueError,
        match=r"layer .conv1.: mask shape \(16, 3, 3, 3\) != weight shape \(32, 3, 3, 3\)",
    ):
        Masks.load(path, build_model("cifar_resnet_20_32"))


def test_corrupt_file_is_refused(tmp_path):
    _, _, masks = _masks()
    path = masks.save(tmp_path / "m.parquet")
    table = pq.read_table(path)
    bits = table.column("bits").to_pylist()
    bits[0] = bytes([bits[0][0] ^ 0xFF]) + bits[0][1:]
    import pyarrow as pa

    bad = table.set_column(table.column_names.index("bits"), "bits", pa.array(bits, pa.binary()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="checksum mismatch"):
        Masks.load(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable masks Parquet file"):
        Masks.load(tmp_path / "junk.parquet")
    with pytest.raises(FileNotFoundError):
        Masks.load(tmp_path / "missing.parquet")


def test_density_report_rows():
    model, plan, masks = _masks()
    rows = density_report(masks, model)
    assert rows[-1]["layer"] == "total"
    assert rows[-1]["kept"] == plan.total_kept
    assert rows[0]["kind"] == "Conv2d" and rows[-2]["kind"] == "Linear"
    text = format_report(rows)
    assert "layer3.0.shortcut.0" in text
    assert report_table(rows).num_rows == len(plan.layers) + 1


def test_bernoulli_sampling_is_optional_and_approximate():
    model = build_model("cifar_resnet_20")
    plan = layer_densities("uniform", layer_specs(model), 0.5)
    m = Masks.random(plan, 0, sampling="bernoulli")
    assert m.density() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="valid choices"):
        Masks.random(plan, 0, sampling="poisson")


def test_masks_metadata_is_covered_by_a_checksum(tmp_path):
    """Scheme, seed and target density live in the file's metadata: changing them without
    the masks is refused, as a changed bit is."""
    import json

    import pyarrow.parquet as pq

    from rp_tune.models import build_model, layer_specs
    from rp_tune.sparsity import layer_densities

    model = build_model("cifar_resnet_8")
    masks = Masks.random(layer_densities("erk", layer_specs(model), 0.1), seed=3)
    path = masks.save(tmp_path / "m.parquet")
    assert Masks.load(path, model).meta["seed"] == "3"
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"rp_tune.masks"] = json.dumps({**masks.meta, "seed": "4"}).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "lied.parquet")
    with pytest.raises(ValueError, match="checksum mismatch of the metadata"):
        Masks.load(tmp_path / "lied.parquet")
    old = {k: v for k, v in meta.items() if k != b"rp_tune.masks.sha256"}
    pq.write_table(table.replace_schema_metadata(old), tmp_path / "old.parquet")
    assert Masks.load(tmp_path / "old.parquet").meta["seed"] == "4"  # files from before


def test_a_plan_that_empties_a_layer_is_refused_unless_asked(tmp_path):
    from rp_tune.config import ConfigError, from_flat
    from rp_tune.trial.train import run_trial

    flat = {
        "data.name": "synthetic",
        "model.name": "cifar_resnet_8",
        "sparsity.scheme": "uniform",
        "sparsity.density": 1e-9,
        "train.epochs": 1,
        "evaluation.fgsm": False,
    }
    with pytest.raises(ConfigError, match="keeps no weight in 10 of 10 layers"):
        run_trial(from_flat(flat), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    r = run_trial(from_flat({**flat, "sparsity.allow_empty_layers": True}), tmp_path / "ok")
    assert r["achieved_density"] == 0.0


def test_masks_written_by_the_release_before_the_layers_read_back_with_their_metadata(tmp_path):
    """The file format outlives module paths: a masks.parquet that release 6265fed wrote
    (in the interrupted sweep of tests/data) reads back with its metadata and its checksum
    checked, and one written now carries the same keys."""
    import tarfile

    import pyarrow.parquet as pq

    from rp_tune.models import build_model

    archive = Path(__file__).parent / "data" / "old_sweep_6265fed.tar.gz"
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/masks.parquet"))
        (tmp_path / "old.parquet").write_bytes(tar.extractfile(member).read())
    old = Masks.load(tmp_path / "old.parquet", build_model("cifar_resnet_8"))
    assert old.meta["scheme"] in ("erk", "uniform") and "seed" in old.meta
    old.save(tmp_path / "new.parquet")
    keys = set(pq.read_metadata(tmp_path / "new.parquet").metadata)
    assert {b"rp_tune.masks", b"rp_tune.masks.sha256"} <= keys
