"""The sparse-training methods as the rest of rp_tune sees them: one registry row each
(`rp_tune.methods.METHODS`), one class each behind one protocol, and nothing outside the
methods package naming one. A toy method, added as the README's "Adding a sparse-training
method" says (one class, one row), trains through the real loop."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from rp_tune.config import ConfigError, SparsityConfig, from_flat, run_key, trial_epochs
from rp_tune.methods import DEFAULT_METHOD, METHODS, Method
from rp_tune.methods.base import SparseTraining, check_below_start
from rp_tune.methods.imp import prune_by_magnitude
from rp_tune.planning.space import expand_space
from rp_tune.results.grouping import line_label
from rp_tune.trial.groups import group_refusal
from rp_tune.trial.train import run_trial
from tests.helpers import QUICK_TRIAL

ROOT = Path(__file__).resolve().parents[1]


def _strings(path: Path) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def names_a_method(text: str) -> bool:
    """A string that is a method's name, or says `mode=<name>` / `mode='<name>'`."""
    names = "|".join(map(re.escape, METHODS))
    return text in METHODS or re.search(rf"mode\s*=\s*['\"]?({names})\b", text) is not None


def test_no_module_outside_the_methods_package_names_a_method():
    found = [
        f"{p.relative_to(ROOT)}:{line}: {text!r}"
        for p in sorted((ROOT / "rp_tune").rglob("*.py"))
        if "methods" not in p.relative_to(ROOT).parts
        for line, text in _strings(p)
        if names_a_method(text)
    ]
    assert not found, "ask rp_tune.methods instead:\n" + "\n".join(found)


def test_the_check_catches_a_mode_named_in_code():
    assert names_a_method("imp") and names_a_method("sparsity.mode='granet': GraNet ...")
    assert names_a_method("sparsity.mode=slt: each member")
    assert not names_a_method("imp_round") and not names_a_method("a static shape")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_row_names_a_class_of_the_protocol_and_keys_of_the_config(name):
    row = METHODS[name]
    cls = row.load()
    assert issubclass(cls, SparseTraining) and row.name == name
    fields = {f"sparsity.{f.name}" for f in dataclasses.fields(SparsityConfig)}
    assert set(row.keys) <= fields, set(row.keys) - fields
    if name != DEFAULT_METHOD:  # the fused loop calls no hooks: every other method says why
        assert row.alone
    assert cls.state_key or cls.state_dict is SparseTraining.state_dict


def test_an_unknown_mode_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"sparsity.mode='nope' is invalid; valid: \['static'"):
        from_flat({"sparsity.mode": "nope"})


# --- a toy method, as the README's example adds one ----------------------------------------


class OneShot(SparseTraining):
    """From a random start mask, one global magnitude pruning to sparsity.density at the end
    of the first half of training."""

    @classmethod
    def check(cls, s):
        check_below_start(s, "one-shot pruning prunes")

    def end_epoch(self, trial, epoch):
        if epoch + 1 == self.cfg.train.epochs // 2:
            masks = trial.masks
            keep = round(self.cfg.sparsity.density * masks.total())
            weights = dict(zip(masks.masks, masks.bound()[0]))
            masks.set_(prune_by_magnitude(weights, masks.masks, keep))
            masks.apply_()
        return {}


TOY = Method(
    "one_shot",
    "one-shot magnitude pruning",
    f"{__name__}:OneShot",
    keys=("sparsity.start_density",),
    from_start=True,
    alone="each member prunes by its own magnitudes; one-shot trials run alone",
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, TOY.name, TOY)
    monkeypatch.setattr("rp_tune.config.MODES", tuple(METHODS))
    return {**QUICK_TRIAL, "data.synthetic_test": 64, "sparsity.scheme": "er",
            "sparsity.mode": "one_shot", "sparsity.start_density": 0.5,
            "sparsity.density": 0.1, "train.epochs": 2}  # fmt: skip


def test_a_method_added_by_one_class_and_one_row_trains_through_the_loop(toy, tmp_path):
    cfg = from_flat(toy)
    assert "-er0.5-one_shot-d0.1-" in run_key(cfg)  # named by its start, like IMP
    assert line_label(toy) == "er+one_shot" and trial_epochs(cfg.to_flat()) == 2
    assert "one-shot trials run alone" in group_refusal(cfg)
    out = run_trial(cfg, tmp_path / "t")
    # epoch 1 trained the start mask, epoch 2 the pruned one: the masks the trial saved
    assert out["history"][0]["epoch"] == 1 and out["achieved_density"] == pytest.approx(
        0.1, abs=1e-3
    )
    # the toy's keys are refused for other methods, the others' for the toy
    with pytest.raises(ConfigError, match=r"only .*one-shot magnitude pruning \(sparsity.mode"):
        from_flat({**toy, "sparsity.mode": "static", "sparsity.density": 0.5})
    with pytest.raises(ConfigError, match=r"sparsity.levels=3 with sparsity.mode='one_shot'"):
        from_flat({**toy, "sparsity.levels": 3})
    with pytest.raises(ConfigError, match="one-shot pruning prunes"):
        from_flat({**toy, "sparsity.density": 0.6})


def test_planning_drops_the_keys_a_trials_method_does_not_read(toy):
    plan = expand_space(
        "smoke",
        {"sparsity.mode": ["static", "one_shot"], "sparsity.start_density": "0.5",
         "sparsity.scheme": "er", "sparsity.density": "0.1"},
    )  # fmt: skip
    by_mode = {c.sparsity.mode: c for c in plan}
    assert by_mode["static"].sparsity.start_density == SparsityConfig.start_density
    assert by_mode["one_shot"].sparsity.start_density == 0.5


def test_drop_and_grow_keys_ride_along_as_before():
    """Every method's config carries SET/RigL's keys: a fixed mask ignores them (planning
    drops them from a grid), IMP refuses them with its reason, in a config and in a space."""
    static = from_flat({"sparsity.mode": "static", "sparsity.growth": "random"})
    assert run_key(static) == "cifar_resnet_20-erk-d0.1-s0-aa0f176218"  # as release 6265fed
    imp = {"sparsity.mode": "imp", "sparsity.start_density": 0.5, "sparsity.growth": "random"}
    with pytest.raises(ConfigError, match="sparsity.growth with sparsity.mode='imp'"):
        from_flat({**imp, "sparsity.density": 0.25})
    grid = {"sparsity.mode": ["static", "dynamic"], "sparsity.growth": "random"}
    by_mode = {c.sparsity.mode: c for c in expand_space("smoke", grid)}
    assert by_mode["static"].sparsity.growth == SparsityConfig.growth
    assert by_mode["dynamic"].sparsity.growth == "random"
