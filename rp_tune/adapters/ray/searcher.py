"""The sweep's planned trials handed to Tune one by one: a `tune.search.Searcher` of rp_tune's
own in place of a grid-search spec.

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


class PlannedTrials(Searcher):
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
        """Nothing to learn: the plan is fixed (the matching-density search will learn here)."""

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next = int(state["next"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))
