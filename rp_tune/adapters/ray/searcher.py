"""Tune's searchers of rp_tune: the sweep's planned trials handed out one by one
(`PlannedTrials`, in place of a grid-search spec), and the matching-density search that
decides its trials as results come in (`MatchingTrials`).

Why not `tune.grid_search(entries)`: Tune's grid-search variant generator deep-copies the
whole spec, the list of every trial's entry included, for every variant it makes, so a
sweep's start grew with the square of its trials (10,000 trials: no trial started after 6
minutes). Here the entries are held once and each suggestion is one entry; the constants
every trial shares stay in `param_space`, which Tune merges into each suggestion.

State: the index of the next entry, saved by Tune with the experiment (`save`/`restore`: a
few bytes, not the entries, which reach the sweep's `tuner.pkl` once when it starts), so a
`--resume` goes on where the searcher stood and never hands out an entry twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ray.tune.search import Searcher


class _JsonState:
    """Tune's save/restore of a searcher as its `get_state()` in JSON (a few bytes to a
    few KB: never the plan itself)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


class PlannedTrials(_JsonState, Searcher):
    """Suggests `{"trial": entry}` for each planned entry in order, then FINISHED."""

    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        self._entries = list(entries)
        self._next = 0

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """The constants of `param_space` are Tune's to merge; nothing to search."""
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._entries):
            return Searcher.FINISHED
        entry = self._entries[self._next]
        self._next += 1
        return {"trial": entry}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Nothing to learn: the plan is fixed (`MatchingTrials` learns here)."""

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next = int(state["next"])


Probe = tuple[int, float, int]  # (group, density, seed index)


class MatchingTrials(_JsonState, Searcher):
    """The matching-density search of every group (`rp_tune.planning.matching`) as Tune's
    searcher: each group's round of probes handed out as trials, each result recorded, the
    next round planned once a group's round is back; FINISHED when every group is done.

    A probe is an ordinary trial: stored with the sweep (its entry in trials.json, for
    --status, --report and reuse) before Tune starts it. One that finished before, in any
    sweep under the results root, is not trained: its test accuracy is recorded at once and
    its records join this sweep. Tune's config of a probe carries its flat config (the plan
    handed to the trainable at the start cannot know it). State (`save`/`restore`): every
    group's search and the probes in flight, by Tune's trial id."""

    def __init__(
        self,
        groups: Sequence[Any],
        settings: Any,
        root: str,
        name: str,
        reuse: bool = True,
        record: dict[str, Any] | None = None,
        group_size: int = 1,
        groups_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.groups = list(groups)
        self.settings = settings
        self.record = record or {}  # what identifies the search (search.json, --resume)
        self.root, self.name, self.reuse = root, name, reuse
        # --group-size K: up to K queued probes that can fuse train as one trial group, its
        # members' entries in <groups_dir>/<unit>.json (as a grid sweep's groups)
        self.group_size, self.groups_dir = group_size, groups_dir
        self._done_before: dict[str, Any] | None = None  # identity -> (sweep, entry), lazily
        # a probe: (group, density, seed index); one trial serves every group asking for
        # its run key (the dense reference of a model is every one of its schemes')
        self._queue: dict[str, list[Probe]] = {}  # run key -> probes, in order
        # Tune trial id -> [(run key, probes)]: one pair, or a trial group's members
        self._in_flight: dict[str, list[tuple[str, list[Probe]]]] = {}
        self._acc: dict[str, float | None] = {}  # run key -> test accuracy (None: failed)
        self._member_acc: dict[str, float] = {}  # a group member's test accuracy, as reported
        from rp_tune.planning.matching import MatchingSearch

        self._searches = [MatchingSearch(settings) for _ in self.groups]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_done_before": None}  # read again by a resumed driver

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return True

    def entry(self, group: int, density: float, seed: int) -> dict[str, Any]:
        """The trials.json entry of one probe: its run key and flat config."""
        from rp_tune.config import run_key

        cfg = self.groups[group].probe(density, seed)
        return {"run_key": run_key(cfg), "flat": cfg.to_flat()}

    def _finished_before(self, entry: dict[str, Any]) -> float | None:
        """The test accuracy of a probe that finished before under the results root (its
        records copied into this sweep where another sweep trained it), else None."""
        from rp_tune.config import trial_identity
        from rp_tune.core import storage as store
        from rp_tune.planning.plan import finished_under
        from rp_tune.planning.records import copy_reused_trials, last_result

        if not self.reuse:
            return None
        if self._done_before is None:
            self._done_before = finished_under(self.root)
        found = self._done_before.get(trial_identity(entry["flat"]))
        if found is None:
            return None
        sweep, stored = found
        acc = last_result(store.join(self.root, sweep, stored["run_key"])).get("test_acc")
        if acc is None:
            return None
        if sweep != self.name:
            reused = {**stored, "reused_from": sweep}
            copy_reused_trials(self.root, self.name, [reused])
            self._store(reused)
        return float(acc)

    def _store(self, entry: dict[str, Any]) -> None:
        """The probe's entry stored with the sweep (`records.store_search_trial`)."""
        from rp_tune.core import storage as store
        from rp_tune.planning.records import store_search_trial

        store_search_trial(store.join(self.root, self.name), entry)

    def _refill(self) -> None:
        """The next round of every group whose round is back: a probe whose run key this
        search trained, or that finished before, is recorded at once (and may let its group
        plan again); one already queued or training waits for that trial's result."""
        flying = {key: probes for pairs in self._in_flight.values() for key, probes in pairs}
        recorded = False
        for _ in range(10_000):
            added = False
            for g, search in enumerate(self._searches):
                for density, seed in search.plan_round():
                    probe, entry = (g, density, seed), self.entry(g, density, seed)
                    key = entry["run_key"]
                    acc = self._acc.get(key)
                    if key not in self._acc and key not in self._queue and key not in flying:
                        acc = self._finished_before(entry)
                    if acc is not None or key in self._acc:
                        search.record(density, seed, acc)
                        added = recorded = True
                    elif key in flying:
                        flying[key].append(probe)
                    else:
                        self._queue.setdefault(key, []).append(probe)
            if not added:
                break
        if recorded:  # results taken from trials that finished before: search.json says so
            self.write()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self._queue:
            self._refill()
        if not self._queue:
            done = all(s.done for s in self._searches) and not self._in_flight
            return Searcher.FINISHED if done else None  # None: Tune asks again later
        key = next(iter(self._queue))
        probes = self._queue.pop(key)
        batch = [(key, probes, self.entry(*probes[0]))]
        batch += self._fellows(batch[0][2])
        for *_, entry in batch:
            self._store(entry)
        self._in_flight[trial_id] = [(k, probes) for k, probes, _ in batch]
        if len(batch) == 1:
            return {"trial": batch[0][2]}
        return {"trial": self._unit([entry for *_, entry in batch])}

    def _fellows(self, entry: dict[str, Any]) -> list[tuple[str, list[Probe], dict[str, Any]]]:
        """With --group-size K: up to K - 1 more queued probes that can train in one trial
        group with `entry` (`rp_tune.trial.groups`: joinable, alike but for sparsity and
        seeds), popped from the queue; [] otherwise."""
        from rp_tune.config import from_flat
        from rp_tune.trial.groups import group_refusal, group_signature

        if self.group_size < 2 or group_refusal(from_flat(entry["flat"])) is not None:
            return []
        sig, out = group_signature(entry["flat"]), []
        for key in list(self._queue):
            if len(out) + 1 >= self.group_size:
                break
            other = self.entry(*self._queue[key][0])
            if group_signature(other["flat"]) == sig and not group_refusal(
                from_flat(other["flat"])
            ):
                out.append((key, self._queue.pop(key), other))
        return out

    def _unit(self, members: list[dict[str, Any]]) -> dict[str, Any]:
        """Tune's config of a trial group of probes, its members' records and file written
        first, as a grid sweep's (`records.write_unit`); with its first member's config."""
        from rp_tune.core import storage as store
        from rp_tune.planning.records import write_unit
        from rp_tune.trial.groups import unit_key

        unit = {"run_key": unit_key(members), "members": members}
        path = store.join(self.root, self.name)
        return {**write_unit(path, self.groups_dir or "", unit), "flat": members[0]["flat"]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A trial group's member reports its own rows: its final test accuracy kept for
        the group's end."""
        pairs = self._in_flight.get(trial_id)
        if pairs and len(pairs) > 1 and result.get("test_acc") is not None:
            self._member_acc[str(result.get("run_key"))] = float(result["test_acc"])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """The probe's test accuracy into its group's search (a trial group: each member's);
        a failed trial (or one without a test accuracy) as failed: its seed is not asked
        for again."""
        pairs = self._in_flight.pop(trial_id, None)
        if pairs is None:
            return
        for key, probes in pairs:
            if len(pairs) == 1:
                acc = None if error or not result else result.get("test_acc")
            else:  # a member: its own last row (stored, when the driver restarted meanwhile)
                acc = self._member_acc.pop(key, None)
                acc = self._stored_acc(key) if acc is None else acc
            self._acc[key] = None if acc is None else float(acc)
            for g, density, seed in probes:
                self._searches[g].record(density, seed, self._acc[key])
        self.write()

    def _stored_acc(self, key: str) -> float | None:
        """A group member's test accuracy from its rows in the sweep, None if it has none."""
        from rp_tune.core import storage as store
        from rp_tune.planning.records import last_result

        try:
            acc = last_result(store.join(self.root, self.name, key)).get("test_acc")
        except (OSError, ValueError):
            return None
        return None if acc is None else float(acc)

    def write(self) -> None:
        """<sweep>/search/search.json: where every group's search stands (--status, --report)."""
        from rp_tune.core import storage as store
        from rp_tune.planning.matching_plan import write_search

        path = store.join(self.root, self.name)
        write_search(path, self.record, self.results(), self.get_state())

    def results(self) -> list[dict[str, Any]]:
        """Each group's name and its search's result."""
        return [{"group": grp.name, **s.result()} for grp, s in zip(self.groups, self._searches)]

    def get_state(self) -> dict[str, Any]:
        return {
            "searches": [s.state() for s in self._searches],
            "queue": [[key, [list(p) for p in probes]] for key, probes in self._queue.items()],
            "in_flight": {
                t: [[key, [list(p) for p in probes]] for key, probes in pairs]
                for t, pairs in self._in_flight.items()
            },
            "acc": self._acc,
            "member_acc": self._member_acc,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        from rp_tune.planning.matching import MatchingSearch

        self._searches = [MatchingSearch.from_state(self.settings, s) for s in state["searches"]]

        def probes(items: list) -> list[Probe]:
            return [(int(g), float(d), int(k)) for g, d, k in items]

        self._queue = {key: probes(items) for key, items in state["queue"]}
        self._in_flight = {}
        for t, pairs in state["in_flight"].items():
            if isinstance(pairs[0], str):  # stored before trial groups: [key, probes]
                pairs = [pairs]
            self._in_flight[t] = [(key, probes(items)) for key, items in pairs]
        self._acc = dict(state["acc"])
        self._member_acc = dict(state.get("member_acc", {}))
