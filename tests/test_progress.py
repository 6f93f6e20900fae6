"""The console's arithmetic and the status read from storage, without Ray."""

import json

import pytest

from rp_tune.planning.progress import (
    Progress,
    eta_seconds,
    format_duration,
    status_table,
    sweep_status,
)
from rp_tune.planning.records import write_stored_trials
from rp_tune.planning.space import expand_space


def test_durations_read_as_a_person_writes_them():
    assert [format_duration(s) for s in (0, 45, 200, 3600 * 5 + 12 * 60, 86400 * 2 + 3 * 3600)] == [
        "0s",
        "45s",
        "3m20s",
        "5h12m",
        "2d3h",
    ]


def test_eta_is_measured_epoch_time_times_epochs_left_over_concurrency():
    assert eta_seconds([], 10, 2) is None  # nothing measured yet
    assert eta_seconds([10.0, 20.0], 12, 3) == pytest.approx(15.0 * 12 / 3)
    assert eta_seconds([10.0], 0, 3) == 0.0


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_counts_events_and_keeps_the_best_validation_accuracy():
    epochs = {"a": 4, "b": 4, "c": 4}
    clock = Clock()
    p = Progress(epochs, concurrency=2, every_s=30, clock=clock)
    assert p.line() == "[0/3 done, 0 running, 0 failed | ETA after 1st epoch]"
    assert p.started("a") == "started  a"
    assert p.started("b", resumed_from=2) == "resumed  b at epoch 2/4"
    p.result("a", {"epoch": 1, "val_acc": 0.5, "time_this_iter_s": 10.0})
    p.result("b", {"epoch": 3, "val_acc": 0.7, "time_this_iter_s": 20.0})
    p.result("b", {"epoch": 3, "val_acc": 0.7, "time_this_iter_s": 20.0})  # re-reported: once
    assert p.epoch_seconds == [10.0, 20.0]
    # left: a 3 + b 1 + c 4 = 8 epochs x 15 s / 2 at once = 60 s
    assert p.line() == "[0/3 done, 2 running, 0 failed | best val_acc 0.7000 (b) | ETA 1m00s]"
    line = p.ended("b", {"epoch": 4, "test_acc": 0.75, "achieved_density": 0.1}, "finished")
    assert line == "finished b  test_acc 0.7500  density 0.1000"
    assert p.ended("a", {}, "failed", "Traceback...\nDataError: cifar10 missing") == (
        "failed   a  DataError: cifar10 missing"
    )
    # a failed trial's epochs are not counted as work left; c's 4 are
    assert p.line() == "[1/3 done, 0 running, 1 failed | best val_acc 0.7000 (b) | ETA 30s]"
    assert p.due() and not p.due()
    clock.now = 31.0
    assert p.due()


def _trial_folder(sweep, key, rows):
    (sweep / key).mkdir(parents=True, exist_ok=True)
    (sweep / key / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_status_reads_every_trial_from_storage(tmp_path):
    sweep = tmp_path / "smoke"
    configs = expand_space("smoke", {"seed": [0, 1], "sparsity.density": "0.1"})
    entries = write_stored_trials(str(sweep), configs)
    keys = [e["run_key"] for e in entries]
    epochs = configs[0].train.epochs
    _trial_folder(sweep, keys[0], [{"epoch": epochs, "val_acc": 0.9, "test_acc": 0.88}])
    _trial_folder(sweep, keys[1], [{"epoch": 1, "val_acc": 0.5, "time_total_s": 3.0}])
    _trial_folder(sweep, keys[2], [{"epoch": 1, "val_acc": 0.4}])
    state = {"trial_data": [[json.dumps({"relative_logdir": keys[2], "status": "ERROR"}), {}]]}
    (sweep / "experiment_state-2026-12-02_00-00-00.json").write_text(json.dumps(state))
    states = {t.run_key: t for t in sweep_status(str(sweep), driver_alive=True)}
    assert [states[k].status for k in keys] == ["finished", "running", "failed", "pending"]
    assert states[keys[1]].seconds == 3.0 and states[keys[1]].epoch == 1
    stopped = {t.run_key: t.status for t in sweep_status(str(sweep), driver_alive=False)}
    assert stopped[keys[1]] == "stopped"
    table = status_table(list(states.values()))
    assert table.splitlines()[-1] == (
        "trials: 4  finished: 1  running: 1  failed: 1  stopped: 0  pending: 1"
    )
    assert "0.8800" in table
    with pytest.raises(FileNotFoundError, match="no sweep at"):
        sweep_status(str(tmp_path / "other"), driver_alive=False)


def test_the_tables_of_a_large_stopped_sweep_count_its_pending_trials_in_one_line():
    """Up to 20 pending trials are listed; past that, none (a 10,000-trial sweep stopped
    early would print 10,000 rows of dashes), one line counts them; the totals stay whole."""
    from rp_tune.planning.plan import SweepSummary, TrialOutcome
    from rp_tune.planning.progress import TrialState

    for pending, listed in ((20, 22), (21, 2)):
        outcomes = [TrialOutcome("a", "finished", 2, 2, 0, {"test_acc": 0.5}),
                    TrialOutcome("b", "failed", 1, 2, 0)]  # fmt: skip
        outcomes += [TrialOutcome(f"p{i:03d}", "pending", 0, 2, 0) for i in range(pending)]
        states = [TrialState(t.run_key, t.status, t.epoch, t.epochs) for t in outcomes]
        for table in (SweepSummary("s", "/x/s", outcomes).table(), status_table(states)):
            lines = table.splitlines()
            assert sum(ln.startswith(("a ", "b ", "p0")) for ln in lines) == listed, table
            unlisted = [ln for ln in lines if "pending trials (not started yet)" in ln]
            assert unlisted == (
                []
                if listed == 22
                else [f"... and {pending} pending trials (not started yet), not listed"]
            )
            assert f"trials: {pending + 2}  finished: 1" in lines[-1]
