"""Planning without Ray: the stored identity of a sweep's trials and --resume's check."""

import json

import pytest

from rp_tune.plan import (
    SweepError,
    check_resume,
    config_differences,
    expand_space,
    is_finished,
    stored_trials,
    write_stored_trials,
)


def test_a_stored_config_without_a_newer_field_matches_the_same_trials():
    configs = expand_space("smoke")
    stored = [c.to_flat() for c in configs]
    for flat in stored:
        del flat["sparsity.grasp_per_class"]  # a release before that field existed
    assert config_differences(stored, configs) == []


def test_differences_name_the_keys_that_changed():
    configs = expand_space("smoke")
    stored = [c.to_flat() for c in configs]
    assert config_differences(stored, expand_space("smoke", {"train.epochs": "3"})) == [
        "train.epochs"
    ]
    more = expand_space("smoke", {"seed": [0, 1]})
    assert "seed" in config_differences(stored, more)
    # where the data live and how often checkpoints are written never change a result
    assert config_differences(stored, expand_space("smoke", {"data.root": "/elsewhere"})) == []


def test_gpus_left_to_the_sweep_match_what_it_chose():
    configs = expand_space("smoke")
    chosen = [c.replace(**{"resources.gpus_per_worker": 0.0}).to_flat() for c in configs]
    assert config_differences(chosen, configs) == []
    quarter = expand_space("smoke", {"resources.gpus_per_worker": "0.25"})
    assert config_differences(chosen, quarter) == ["resources.gpus_per_worker"]


def test_check_resume_refuses_other_configs_and_a_missing_sweep(tmp_path):
    path = str(tmp_path / "smoke")
    with pytest.raises(SweepError, match="no sweep to resume at"):
        check_resume(path, expand_space("smoke"))
    entries = write_stored_trials(path, expand_space("smoke"))
    assert stored_trials(path) == json.loads(json.dumps(entries, default=list))
    check_resume(path, expand_space("smoke"))
    with pytest.raises(SweepError, match="keys differ from what it stored: train.epochs"):
        check_resume(path, expand_space("smoke", {"train.epochs": "7"}))
    bad = json.loads((tmp_path / "smoke" / "trials.json").read_text())
    bad[0]["flat"]["sparsity.retired_option"] = 1
    (tmp_path / "smoke" / "trials.json").write_text(json.dumps(bad))
    with pytest.raises(SweepError, match="stored a config unknown config key"):
        check_resume(path, expand_space("smoke"))


def test_one_finished_rule():
    assert is_finished({"epoch": 4, "test_acc": 0.5}, 4)
    assert not is_finished({"epoch": 4}, 4)  # final metrics not reported yet
    assert not is_finished({"epoch": 3, "test_acc": 0.5}, 4)
