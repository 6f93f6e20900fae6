"""Planning trial groups (--group-size) and reading their members' records, without Ray."""

from __future__ import annotations

import json

import pytest

from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.planning.plan import stored_outcome, trial_cost
from rp_tune.planning.progress import sweep_status
from rp_tune.planning.records import (
    all_results,
    copy_reused_trials,
    last_result,
    write_member_records,
)
from rp_tune.trial.groups import is_unit, plan_units, unit_key

BASE = {"model.name": "cifar_resnet_8", "data.name": "synthetic", "train.epochs": 2}


def _entry(**over):
    cfg = from_flat({**BASE, **over})
    return {"flat": cfg.to_flat(), "run_key": run_key(cfg)}


def test_groups_hold_only_trials_that_differ_in_sparsity_and_seeds():
    entries = [
        _entry(**{"sparsity.density": d, "seed": s}) for d in (0.1, 0.2, 0.5) for s in (0, 1, 2)
    ]
    entries += [
        _entry(**{"model.name": "cifar_resnet_14", "sparsity.density": d}) for d in (0.1, 0.2)
    ]
    entries += [_entry(**{"sparsity.mode": "dynamic", "sparsity.density": 0.1})]
    entries += [_entry(**{"train.lr": 0.05})]  # its own signature, no partner: alone, no reason
    units, why = plan_units(entries, 4)
    groups = [u for u in units if is_unit(u)]
    # 9 ResNet-8 trials by 4: 3 groups of 3 (as even as can be), the 2 ResNet-14s one group
    assert sorted(len(g["members"]) for g in groups) == [2, 3, 3, 3]
    for g in groups:
        models = {m["flat"]["model.name"] for m in g["members"]}
        assert len(models) == 1 and g["flat"] == g["members"][0]["flat"]
        assert g["run_key"] == unit_key(g["members"]) and g["run_key"].startswith("group-")
    alone = [u for u in units if not is_unit(u)]
    assert len(alone) == 2 and list(why) == [entries[-2]["run_key"]]
    assert "sparsity.mode=dynamic: SET/RigL" in why[entries[-2]["run_key"]]
    members = [m["run_key"] for g in groups for m in g["members"]] + [u["run_key"] for u in alone]
    assert sorted(members) == sorted(e["run_key"] for e in entries)  # every trial once
    assert plan_units(entries, 1)[0] == entries and plan_units(entries, 1)[1] == {}
    with pytest.raises(ConfigError, match="--group-size 0"):
        plan_units(entries, 0)


def _group_on_disk(sweep, members, rows):
    unit = {"run_key": unit_key(members), "flat": members[0]["flat"], "members": members}
    write_member_records(str(sweep), unit)
    folder = sweep / unit["run_key"]
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epo')
    return unit


def test_a_members_records_are_its_rows_of_its_groups_results(tmp_path):
    sweep = tmp_path / "res" / "s"
    a, b = _entry(**{"sparsity.density": 0.1}), _entry(**{"sparsity.density": 0.5})
    rows = []
    for epoch in (1, 2):
        for m in (a, b):
            row = {"run_key": m["run_key"], "epoch": epoch, "time_total_s": 10.0 * epoch,
                   "group_size": 2, "epoch_seconds": 4.0}  # fmt: skip
            if epoch == 2 and m is a:
                row["test_acc"] = 0.5
            if epoch == 2 and m is b:
                row = {"run_key": b["run_key"], "epoch": 2, "member_failed": "loss is nan",
                       "group_size": 2, "time_total_s": 20.0}  # fmt: skip
            rows.append(row)
    _group_on_disk(sweep, [a, b], rows)
    ra = all_results(str(sweep / a["run_key"]))
    assert [r["epoch"] for r in ra] == [1, 2] and {r["run_key"] for r in ra} == {a["run_key"]}
    assert last_result(str(sweep / b["run_key"]))["member_failed"] == "loss is nan"
    oa, ob = stored_outcome(str(sweep), a), stored_outcome(str(sweep), b)
    assert oa.status == "finished" and oa.metrics["test_acc"] == 0.5
    assert ob.status == "failed" and ob.error == "loss is nan"
    # a member's share of its group's device: half the group's CPU-seconds
    assert trial_cost(ra, a["flat"])["device_hours"] == pytest.approx(20.0 / 3600 / 2)
    (sweep / "trials.json").write_text(json.dumps([a, b]))
    states = {s.run_key: s.status for s in sweep_status(str(sweep), driver_alive=False)}
    assert states == {a["run_key"]: "finished", b["run_key"]: "failed"}
    # reused by another sweep: the member's own rows, copied as a result.json of its own
    copy_reused_trials(str(tmp_path / "res"), "t", [{**a, "reused_from": "s"}])
    copied = tmp_path / "res" / "t" / a["run_key"] / "result.json"
    assert [json.loads(ln)["epoch"] for ln in copied.read_text().splitlines()] == [1, 2]


def test_the_drivers_callbacks_end_each_member_on_its_own(tmp_path):
    """Tune sees one trial per group; the tracker and the console see its members: a member
    that diverged ends failed when its row arrives, the others end finished (each with its
    own last row and cost) when the group completes."""
    from types import SimpleNamespace

    from rp_tune.adapters.ray import sweep
    from rp_tune.planning.progress import Progress

    a, b = _entry(**{"sparsity.density": 0.1}), _entry(**{"sparsity.density": 0.5})
    rows = [
        {"run_key": a["run_key"], "epoch": 2, "test_acc": 0.5, "group_size": 2,
         "time_total_s": 30.0, "epoch_seconds": 3.0},
        {"run_key": b["run_key"], "epoch": 1, "member_failed": "nan loss", "group_size": 2,
         "time_total_s": 10.0},
    ]  # fmt: skip
    folder = tmp_path / "group-x"
    folder.mkdir()
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    unit = {"run_key": "group-x", "flat": a["flat"], "members": [a["run_key"], b["run_key"]]}
    flats = {e["run_key"]: e["flat"] for e in (a, b)}
    trial = SimpleNamespace(config={"trial": unit}, local_path=str(folder), last_result=rows[-1],
                            error_file=None)  # fmt: skip
    calls = []

    class Tracker:
        def trial_result(self, key, flat, result):
            calls.append(("result", key))

        def trial_end(self, key, flat, result, status, error=""):
            calls.append(("end", key, status, error, result.get("device_hours")))

    tracking = sweep.TrackingCallback(Tracker(), flats)
    progress = Progress({a["run_key"]: 2, b["run_key"]: 2}, 1)
    console = sweep.ConsoleCallback(progress, flats)
    for cb in (tracking, console):
        cb.on_trial_start(0, [], trial)
        for r in [*rows, rows[-1]]:  # its failure seen twice (a retried epoch): ended once
            cb.on_trial_result(0, [], trial, r)
        cb.on_trial_complete(0, [], trial)
    assert calls == [
        ("result", a["run_key"]),
        ("result", b["run_key"]),
        ("end", b["run_key"], "failed", "nan loss", None),
        ("result", b["run_key"]),
        ("end", a["run_key"], "finished", "", pytest.approx(30.0 / 3600 / 2)),
    ]
    assert progress.finished == {a["run_key"]} and progress.failed == {b["run_key"]}


def test_a_groups_shared_time_counts_once_in_the_sweeps_totals():
    from rp_tune.planning.plan import cost_totals

    members = [
        {
            "group": "g",
            "train_seconds": 10.0,
            "wall_seconds": 30.0,
            "retry_seconds": 2.0,
            "eval_seconds": e,
            "device_hours": 0.1,
            "device": "GPU",
        }
        for e in (1.0, 2.0)
    ]
    alone = {"train_seconds": 5.0, "wall_seconds": 9.0, "retry_seconds": 0.0,
             "eval_seconds": 1.0, "device_hours": 0.2, "device": "GPU"}  # fmt: skip
    t = cost_totals([*members, alone])
    assert (t["train_seconds"], t["wall_seconds"], t["retry_seconds"]) == (15.0, 39.0, 2.0)
    assert t["eval_seconds"] == 4.0 and t["device_hours_gpu"] == pytest.approx(0.4)
