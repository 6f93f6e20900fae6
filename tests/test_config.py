import pytest

from rp_tune.config import ConfigError, TrialConfig, flat_keys, from_flat, run_key, to_flat


def test_flat_round_trip_default_and_custom():
    cfg = TrialConfig()
    assert from_flat(to_flat(cfg)) == cfg
    custom = from_flat(
        {
            "model.name": "cifar_resnet_56_32",
            "sparsity.scheme": "snip",
            "sparsity.density": 0.05,
            "train.epochs": 3,
            "seed": 2,
            "train.milestones": [1, 2],
        }
    )
    assert from_flat(to_flat(custom)) == custom
    assert custom.train.milestones == (1, 2)


def test_recipe_fills_defaults():
    cfg = from_flat({"train.recipe": "imagenet", "data.name": "imagenet", "model.name": "resnet50"})
    assert cfg.train.lr == 0.4 and cfg.train.warmup_epochs == 5
    assert cfg.train.label_smoothing == 0.1 and cfg.train.bn_weight_decay is False
    assert TrialConfig().train.epochs == 160
    switched = TrialConfig().replace(**{"train.recipe": "imagenet"})
    assert switched.train.milestones == (30, 60, 90)


def test_cli_strings_coerce():
    cfg = from_flat(
        {
            "train.epochs": "2",
            "sparsity.density": "0.5",
            "train.nesterov": "false",
            "train.milestones": "5,8",
            "seed": "3",
        }
    )
    assert cfg.train.epochs == 2 and cfg.sparsity.density == 0.5
    assert cfg.train.nesterov is False and cfg.train.milestones == (5, 8) and cfg.seed == 3


def test_run_key_readable_stable_and_sensitive():
    cfg = from_flat({"sparsity.density": 0.1})
    key = run_key(cfg)
    assert key.startswith("cifar_resnet_20-erk-d0.1-s0-")
    assert key == run_key(from_flat(to_flat(cfg)))
    assert run_key(cfg.replace(**{"train.lr": 0.05})) != key
    # where the data lives is not part of the experiment
    assert run_key(cfg.replace(**{"data.root": "/mnt/other"})) == key
    assert run_key(cfg.replace(**{"sparsity.density": 1.0})).startswith(
        "cifar_resnet_20-dense-d1-s0-"
    )


@pytest.mark.parametrize(
    "flat,words",
    [
        ({"sparsity.scheme": "magic"}, ["sparsity.scheme", "'magic'", "erk", "uniform_plus"]),
        ({"sparsity.density": 0.0}, ["sparsity.density", "0.0", "(0, 1]"]),
        ({"sparsity.density": 1.2}, ["sparsity.density", "1.2"]),
        ({"model.name": "cifar_resnet_21"}, ["model.name", "6n+2"]),
        ({"model.name": "cifar_resnet_20_0"}, ["model.name", "width 0"]),
        ({"model.name": "alexnet"}, ["model.name", "'alexnet'", "vgg16_bn"]),
        ({"data.name": "mnist"}, ["data.name", "'mnist'", "cifar100"]),
        ({"train.epochs": 0}, ["train.epochs", "0", ">= 1"]),
        ({"train.epochs": "two"}, ["train.epochs", "'two'", "integer"]),
        ({"train.precision": "fp8"}, ["train.precision", "bf16"]),
        ({"train.milestones": "120,80"}, ["train.milestones", "increasing"]),
        (
            {"resources.workers": 2, "resources.gpus_per_worker": 0.5},
            ["resources.gpus_per_worker", "NCCL"],
        ),
        ({"seed": -1}, ["seed", "-1"]),
        ({"train.epoch": 3}, ["unknown config key", "train.epoch", "train.epochs"]),
        ({"data.name": "imagenet"}, ["cifar_resnet_20", "wide_resnet50_2"]),
        ({"evaluation.ood_sets": "mnist"}, ["evaluation.ood_sets", "mnist", "gaussian"]),
        ({"evaluation.ood_sets": "cifar10,svhn"}, ["ood_sets", "training dataset"]),
        ({"evaluation.fgsm_eps": 8}, ["evaluation.fgsm_eps", "pixel scale"]),
        ({"sparsity.mode": "rigl"}, ["sparsity.mode", "'rigl'", "dynamic"]),
        ({"sparsity.growth": "magnitude"}, ["sparsity.growth", "gradient", "random"]),
        ({"sparsity.stop_at": 1.5}, ["sparsity.stop_at", "[0, 1]"]),
    ],
)
def test_bad_values_name_key_value_and_choices(flat, words):
    with pytest.raises(ConfigError) as e:
        from_flat(flat)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_frozen():
    cfg = TrialConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
    assert "sparsity.density" in flat_keys()


def test_nan_and_inf_are_refused_wherever_a_number_goes():
    import math

    from rp_tune.config import TrainConfig, TrialConfig

    for key in ("train.weight_decay", "resources.cpus_per_worker", "sparsity.fc_density"):
        for bad in ("nan", "inf", float("nan"), float("-inf")):
            with pytest.raises(ConfigError, match=f"{key}=.* a finite number"):
                from_flat({key: bad})
    with pytest.raises(ConfigError, match="train.weight_decay=nan is invalid; valid: a finite"):
        TrialConfig(train=TrainConfig(weight_decay=math.nan))  # built directly, not from flat


def test_the_quick_paths_of_planning_give_what_the_full_reading_gives():
    """config_identity skips reading a config's flat form again and replace() sets a value
    in its section only: for every trial of several spaces, the same identity and the same
    config as the full round trip through from_flat; bad keys and values still refused."""
    from rp_tune.config import config_identity, from_flat, trial_identity
    from rp_tune.planning.space import expand_space

    for space in ("smoke", "width_scan", "imp_sparse_to_sparse", "granet_sparse_to_sparse"):
        for c in expand_space(space):
            assert config_identity(c) == trial_identity(c.to_flat())
            assert config_identity(c, True) == trial_identity(c.to_flat(), True)
            changes = {"resources.gpus_per_worker": 1.0, "train.epochs": "3", "seed": "7"}
            slow = from_flat({**c.to_flat(), **changes})
            assert c.replace(**changes) == slow
    c = expand_space("smoke")[0]
    with pytest.raises(ConfigError, match="unknown config key"):
        c.replace(**{"train.epoch": 3})
    with pytest.raises(ConfigError, match="train.epochs"):
        c.replace(**{"train.epochs": "many"})
