"""Planning without Ray: the stored identity of a sweep's trials and --resume's check."""

import json

import pytest

from rp_tune.core.errors import SweepError
from rp_tune.planning.plan import check_resume, config_differences
from rp_tune.planning.records import is_finished, stored_trials, write_stored_trials
from rp_tune.planning.space import expand_space


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


def test_the_estimate_uses_the_speed_measured_on_finished_trials(tmp_path):
    """Finished trials under the results root that reported their training time give the
    dry run its rate (per model and device kind, else over all models); without them it
    assumes 25 TFLOP/s and says so."""
    from rp_tune.planning.estimate import (
        estimate_gpu_hours,
        measured_speed,
        speed_assumption,
        trial_table,
    )

    root = tmp_path / "res"
    done = expand_space("smoke", {"resources.gpus_per_worker": "1", "sparsity.density": "0.1"})
    entries = write_stored_trials(str(root / "earlier"), done)
    for e, rate in zip(entries, (2.0, 4.0)):  # TFLOP/s these two trials ran at
        last = {"epoch": 2, "test_acc": 0.5, "train_flops_dense": rate * 1e12 * 10,
                "train_seconds": 10.0}  # fmt: skip
        (root / "earlier" / e["run_key"]).mkdir()
        (root / "earlier" / e["run_key"] / "result.json").write_text(json.dumps(last) + "\n")
    cal = measured_speed(str(root))
    assert cal.per_model == {("cifar_resnet_8", "GPU"): 3.0} and cal.trials == {"GPU": 2}
    models = ["cifar_resnet_8", "cifar_resnet_14"]
    planned = expand_space("smoke", {"resources.gpus_per_worker": "1", "model.name": models})
    _, hours = trial_table(planned, 25.0, cal)
    assert hours == pytest.approx(sum(estimate_gpu_hours(c, 3.0) for c in planned))
    text = speed_assumption(planned, None, cal)
    assert "measured on 2 finished trials" in text and "3 TFLOP/s per GPU (median)" in text
    assert f"{len(planned) // 2} of {len(planned)} trials at their own model's rate" in text
    cpu = expand_space("smoke", {"resources.gpus_per_worker": "0"})
    assert "assumed 25 TFLOP/s per device: no finished trial" in speed_assumption(cpu, None, cal)
    assert "at 7 sustained TFLOP/s per device (--assumed-tflops)" in speed_assumption(cpu, 7, cal)
    assert measured_speed(str(tmp_path / "nothing")).overall == {}
