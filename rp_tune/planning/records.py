"""A sweep's files, read and written in one place: what the sweep stored when it started
(`trials.json`), each trial's folder as Tune writes it (`params.json`, `result.json`) and as
rp_tune adds to it (a group member's `group.json`, `evaluations.json`), and the sweep's
`summary.json`. Status, progress, the report, reuse, resume and evaluate read them here.

    <sweep>/trials.json                 every trial's flat config and run key, at the start
    <sweep>/summary.json                the outcome of the last driver's run
    <sweep>/<run key>/params.json       Tune's config of the trial: {"trial": {"run_key"}}
                                        (a member's, and older releases': its whole entry)
    <sweep>/<run key>/result.json       one JSON line per reported epoch (Tune)
    <sweep>/<run key>/group.json        a group member: its unit's folder (rows are there)
    <sweep>/<run key>/evaluations.json  final evaluations run again (`--evaluate`)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rp_tune.config import TrialConfig, run_key
from rp_tune.core import storage as store
from rp_tune.core.layout import GROUP_FILE

SUMMARY_FILE = "summary.json"  # <sweep>/summary.json: the outcome of the last driver's run
PARAMS_FILE = "params.json"  # <sweep>/<trial>/params.json: Tune's record of the trial's config


def is_finished(metrics: Mapping[str, Any], epochs: int) -> bool:
    """The one rule for a finished trial: it reported its last epoch with its final metrics."""
    return int(metrics.get("epoch", 0) or 0) >= epochs and "test_acc" in metrics


TRIALS_FILE = "trials.json"  # <sweep>/trials.json: every trial's flat config, at the start


def _result_rows(trial_dir: str, newest_first: bool = False) -> Iterator[dict[str, Any]]:
    """A trial's results as Tune recorded them in its result.json (a folder or a URI), each
    line parsed once; a line being written is passed over. A member of a trial group (its
    folder holds `group.json`) has no result.json of its own: its rows are those of its
    group's that carry its run key."""
    location = store.join(trial_dir, "result.json")
    key = None
    if not store.exists(location):
        group = member_group(trial_dir)
        if group is None:
            return
        key = store.basename(trial_dir.rstrip("/"))
        location = store.join(store.parent(trial_dir.rstrip("/")), group, "result.json")
        if not store.exists(location):
            return
    lines = store.read_text(location).splitlines()
    for line in reversed(lines) if newest_first else lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if key is None or row.get("run_key") == key:
            yield row


def last_result(trial_dir: str) -> dict[str, Any]:
    """The last result Tune recorded for a trial (see `_result_rows`); {} if none yet."""
    return next(_result_rows(trial_dir, newest_first=True), {})


def all_results(trial_dir: str) -> list[dict[str, Any]]:
    """Every result Tune recorded for a trial, in order (see `_result_rows`)."""
    return list(_result_rows(trial_dir))


# <sweep>/search/trials.json: a matching-density search's trials, each stored as it starts.
# Below the sweep folder, not in it: on --resume Ray Tune copies the folder's own .json
# files to its staging folder and uploads them back while it runs, so a file rewritten
# during a resumed run there would return to its old content.
SEARCH_TRIALS_FILE = "search/trials.json"


def stored_trials(path: str) -> list[dict[str, Any]]:
    """Every trial of the sweep at `path` as stored: [{"flat", "run_key"}], those of
    trials.json (written when it started) and a search's (written as they start); [] for
    a sweep started before `trials.json` existed."""
    out = []
    for name in (TRIALS_FILE, SEARCH_TRIALS_FILE):
        location = store.join(path, name)
        if store.exists(location):
            out += json.loads(store.read_text(location))
    return out


def store_search_trial(path: str, entry: Mapping[str, Any]) -> None:
    """A search's trial into search/trials.json before it starts (once per run key)."""
    location = store.join(path, SEARCH_TRIALS_FILE)
    entries = json.loads(store.read_text(location)) if store.exists(location) else []
    if all(e["run_key"] != entry["run_key"] for e in entries):
        store.write_text(location, json.dumps([*entries, dict(entry)], default=list))


def trial_entries(configs: Sequence[TrialConfig]) -> list[dict[str, Any]]:
    """The entries trials.json stores for configs that are each their own trial."""
    return [{"flat": c.to_flat(), "run_key": run_key(c)} for c in configs]


def write_stored_trials(path: str, configs: Sequence[TrialConfig]) -> list[dict[str, Any]]:
    """trials.json of a sweep of exactly these configs (each its own run key)."""
    entries = trial_entries(configs)
    write_trial_entries(path, entries)
    return entries


TRIAL_FILES = ("params.json", "result.json", "evaluations.json")  # what a reused trial copies


def copy_reused_trials(root: str, name: str, reused: Sequence[Mapping[str, Any]]) -> None:
    """A reused trial's record (params.json, result.json, evaluations.json) into this
    sweep's folder, so that its status, summary and report read it like its own; the
    checkpoint stays where its sweep wrote it (result.json names it)."""
    for e in reused:
        src = store.join(root, e["reused_from"], e["run_key"])
        dst = store.join(root, name, e["run_key"])
        for f in TRIAL_FILES:
            if store.exists(store.join(src, f)):
                store.write_text(store.join(dst, f), store.read_text(store.join(src, f)))
            elif f == "result.json" and member_group(src):  # a group member's own rows
                rows = "".join(json.dumps(r) + "\n" for r in all_results(src))
                store.write_text(store.join(dst, f), rows)


def write_trial_entries(path: str, entries: Sequence[Mapping[str, Any]]) -> None:
    """trials.json: every trial of the sweep (the reused ones name their sweep). From here
    on the sweep is stored: an interrupted-while-planning record is no longer needed."""
    store.write_text(store.join(path, TRIALS_FILE), json.dumps(list(entries), default=list))
    if store.exists(store.join(path, INTERRUPTED_FILE)):
        store.delete(store.join(path, INTERRUPTED_FILE))


# <sweep>/interrupted.json: the driver was stopped (Ctrl-C, SIGTERM) before it stored the
# sweep's trials. Nothing trained; the record lets the printed `--resume` plan it again.
INTERRUPTED_FILE = "interrupted.json"


def is_stored(path: str) -> bool:
    """The sweep at `path` stored its trials: rp_tune's trials.json, or Tune's own record
    (a sweep of an older release)."""
    return store.exists(store.join(path, TRIALS_FILE)) or store.exists(
        store.join(path, "tuner.pkl")
    )


def interrupted_before_stored(path: str) -> bool:
    """A driver of the sweep at `path` was stopped before it stored the trials."""
    return not is_stored(path) and store.exists(store.join(path, INTERRUPTED_FILE))


def record_interrupted_planning(path: str, command: str) -> None:
    """Record that the sweep's driver was stopped while planning (nothing stored yet), so
    that `--resume` starts it rather than reporting no sweep."""
    stopped = time.strftime("%Y-%m-%d %H:%M:%S")
    store.write_text(
        store.join(path, INTERRUPTED_FILE), json.dumps({"stopped": stopped, "command": command})
    )


def write_member_records(path: str, unit: Mapping[str, Any]) -> None:
    """Each member's folder in the sweep before it trains: `params.json` (its entry, as Tune
    writes a trial's) and `group.json` (its unit), so status, report and reuse find it."""
    for m in unit["members"]:
        folder = store.join(path, m["run_key"])
        store.write_text(store.join(folder, "params.json"), json.dumps({"trial": m}, default=list))
        store.write_text(
            store.join(folder, GROUP_FILE),
            json.dumps({"group": unit["run_key"], "size": len(unit["members"])}),
        )


def write_unit(path: str, groups_dir: str, unit: Mapping[str, Any]) -> dict[str, Any]:
    """A trial group before it trains: its members' records (`write_member_records`) and
    `<groups_dir>/<unit>.json` with their entries (in Tune's config they would repeat in
    every result row); returns Tune's config of it: its key, its members' keys, that file."""
    write_member_records(path, unit)
    group_file = store.join(groups_dir, f"{unit['run_key']}.json")
    store.write_text(group_file, json.dumps(list(unit["members"]), default=list))
    members = [m["run_key"] for m in unit["members"]]
    return {"run_key": unit["run_key"], "members": members, "group_file": group_file}


def member_group(trial_dir: str) -> str | None:
    """The unit folder name a member's folder points at, or None for a trial alone."""
    location = store.join(trial_dir, GROUP_FILE)
    if not store.exists(location):
        return None
    return str(json.loads(store.read_text(location))["group"])


EVALUATIONS_FILE = "evaluations.json"


def read_evaluations(trial_dir: str) -> list[dict[str, Any]]:
    """The evaluations saved for a trial (a folder or a URI); [] when there are none."""
    location = store.join(trial_dir, EVALUATIONS_FILE)
    if not store.exists(location):
        return []
    return json.loads(store.read_text(location))


def evaluated_metrics(trial_dir: str) -> dict[str, float]:
    """Every metric the trial's evaluations added (a later evaluation wins)."""
    out: dict[str, float] = {}
    for entry in read_evaluations(trial_dir):
        out.update(entry.get("metrics", {}))
    return out


def write_evaluations(trial_dir: str, entries: list[dict[str, Any]]) -> None:
    """Save a trial's evaluations (all of them: the file is rewritten)."""
    store.write_text(store.join(trial_dir, EVALUATIONS_FILE), json.dumps(entries, indent=1))


def has_trials(folder: str) -> bool:
    """A sweep folder of a release before trials.json: trial folders with params.json."""
    return any(store.exists(store.join(folder, n, "params.json")) for n in store.list_names(folder))


def read_params(trial_dir: str) -> dict[str, Any] | None:
    """The entry Tune stored as a trial's config (its run key; a group's members; the flat
    config in a group member's and in sweeps of releases before 2026-12-07), or None where
    the folder holds none."""
    location = store.join(trial_dir, PARAMS_FILE)
    if not store.exists(location):
        return None
    return json.loads(store.read_text(location))["trial"]


def write_summary(path: str, text: str) -> None:
    """<sweep>/summary.json: what the driver that ran last saw of every trial."""
    store.write_text(store.join(path, SUMMARY_FILE), text)


def read_summary(path: str) -> dict[str, Any] | None:
    """The sweep's summary.json, or None before a driver ended (or unreadable)."""
    try:
        return json.loads(store.read_text(store.join(path, SUMMARY_FILE)))
    except (OSError, ValueError):
        return None
