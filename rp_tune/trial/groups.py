"""Which trials of a sweep train together as one fused trial group (`--group-size K`).

No torch, no Ray: the plan is made before Ray starts. The fused model itself is
`rp_tune.trial.fused`. A group is one Tune trial (a "unit": its run key starts with `group-`)
whose members stay trials of their own wherever the user looks: each has its folder in the
sweep (`params.json` with its entry, `group.json` naming its unit), its rows in the unit's
`result.json` (read through `rp_tune.planning.records.all_results`), its checkpoint inside
the unit's (`members/<run key>/`), its MLflow run, summary row and report row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from rp_tune.config import ConfigError, TrialConfig, from_flat, run_key
from rp_tune.core.layout import GROUP_PREFIX
from rp_tune.methods import DEFAULT_METHOD, method

SEED_KEYS = ("seed", "seeds.mask", "seeds.init", "seeds.data")


def group_refusal(cfg: TrialConfig) -> str | None:
    """Why `cfg` cannot train as a member of a trial group, or None when it can."""
    if cfg.resources.workers > 1:
        return (
            f"resources.workers={cfg.resources.workers}: a trial group trains in one worker "
            "process, and DDP over a fused model would all-reduce every member's gradients "
            "as one; DDP trials run alone"
        )
    row = method(cfg.sparsity.mode)
    if (row.alone or row.name != DEFAULT_METHOD) and cfg.sparsity.density < 1.0:
        why = row.alone or (
            "a fused group trains fixed masks and calls no method's hooks; its trials run alone"
        )
        return f"sparsity.mode={row.name}: {why}"
    if cfg.data.name == "imagenet":
        return (
            "data.name=imagenet: image folders stream through a DataLoader per trial, and "
            "ImageNet models are not launch-bound; ImageNet trials run alone"
        )
    return None


def group_signature(flat: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What members of one group share: every flat config key but `sparsity.*` and the seeds."""
    return tuple(
        sorted(
            (k, repr(v))
            for k, v in flat.items()
            if not k.startswith("sparsity.") and k not in SEED_KEYS
        )
    )


def check_group(cfgs: Sequence[TrialConfig]) -> None:
    """ConfigError unless `cfgs` can train as one group: each joinable (`group_refusal`) and
    all alike but for sparsity and seeds (the message names the keys that differ)."""
    if not cfgs:
        raise ConfigError("a trial group needs at least one trial")
    for cfg in cfgs:
        why = group_refusal(cfg)
        if why is not None:
            raise ConfigError(f"{run_key(cfg)} cannot join a trial group: {why}")
    first = dict(group_signature(cfgs[0].to_flat()))
    for cfg in cfgs[1:]:
        other = dict(group_signature(cfg.to_flat()))
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise ConfigError(
                f"{run_key(cfg)} and {run_key(cfgs[0])} cannot share a trial group: members may "
                f"differ only in sparsity.* and the seeds, these differ too: {', '.join(differ)}"
            )


def is_unit(entry: Mapping[str, Any]) -> bool:
    """A Tune trial that trains a group (its entry lists members), not a trial of its own."""
    return "members" in entry


def unit_key(members: Sequence[Mapping[str, Any]]) -> str:
    """`group-<model>-k<K>-<hash of the members' run keys>`: the unit's Tune trial and folder."""
    digest = hashlib.sha256("\n".join(m["run_key"] for m in members).encode()).hexdigest()[:10]
    return f"{GROUP_PREFIX}{members[0]['flat']['model.name']}-k{len(members)}-{digest}"


def plan_units(
    entries: Sequence[Mapping[str, Any]], size: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The Tune trials that train `entries`: groups of up to `size` members whose configs
    differ only in sparsity and seeds (in the entries' order, as few groups as `size` allows,
    of sizes as even as can be), and the rest alone.

    Returns (units, why): a unit is an entry alone or {"run_key": unit_key, "flat": the first
    member's flat config (resources, epochs), "members": [entries]}; `why` maps the run key
    of every trial that cannot join a group to the reason (a group of one is no group: a
    trial whose signature no other shares runs alone, without a reason)."""
    if size < 1:
        raise ConfigError(f"--group-size {size}: a number of trials >= 1 (1: every trial alone)")
    why: dict[str, str] = {}
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    order: list[Any] = []
    for e in entries:
        reason = group_refusal(from_flat(e["flat"])) if size > 1 else "--group-size 1"
        if reason is not None:
            if size > 1:
                why[e["run_key"]] = reason
            order.append(dict(e))
            continue
        sig = group_signature(e["flat"])
        if sig not in buckets:
            buckets[sig] = []
            order.append(sig)
        buckets[sig].append(dict(e))
    units: list[dict[str, Any]] = []
    for item in order:
        if isinstance(item, dict):
            units.append(item)
            continue
        members = buckets[item]
        n_groups = -(-len(members) // size)  # as even as can be: 9 by 4 is 3, 3, 3
        bounds = [round(i * len(members) / n_groups) for i in range(n_groups + 1)]
        for lo, hi in zip(bounds, bounds[1:]):
            chunk = members[lo:hi]
            if len(chunk) == 1:
                units.append(chunk[0])
            else:
                units.append(
                    {"run_key": unit_key(chunk), "flat": chunk[0]["flat"], "members": chunk}
                )
    return units, why


def describe_units(units: Sequence[Mapping[str, Any]], why: Mapping[str, str], size: int) -> str:
    """One line (and one per reason a trial runs alone) of how `plan_units` grouped."""
    groups = [u for u in units if is_unit(u)]
    grouped = sum(len(u["members"]) for u in groups)
    reasons: dict[str, int] = {}
    for reason in why.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return f"trial groups of up to {size}: {grouped} trials in {len(groups)} groups, " + (
        f"{len(units) - len(groups)} alone"
        + "".join(f"\n  {n} alone: {reason}" for reason, n in sorted(reasons.items()))
    )
