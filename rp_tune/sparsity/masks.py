"""Exact-count random masks, in-place application, Parquet save/load, density report.

Layer l gets exactly k_l ones at uniformly random positions, drawn from a generator seeded by
sha256(trial seed, layer name): adding or removing a layer never reshuffles the others, and a
mask is reproducible from the config alone. Bernoulli sampling (the
reference code's) is available as `sampling="bernoulli"`; its counts are only right on average.

On disk: one Parquet file, one row per layer (name, shape, numel, density, kept, packed bits,
sha256 of the packed bits); 1 bit per weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from rp_tune.core.seeds import derived_seed
from rp_tune.models import prunable_layers
from rp_tune.sparsity import DensityPlan

log = logging.getLogger(__name__)

SAMPLINGS = ("exact", "bernoulli")


def random_mask(shape: tuple[int, ...], kept: int, seed: int, name: str) -> torch.Tensor:
    """Bool mask of `shape` with exactly `kept` ones at uniformly random positions."""
    numel = int(np.prod(shape))
    if not 0 <= kept <= numel:
        raise ValueError(f"layer {name}: kept={kept} outside [0, {numel}]")
    g = torch.Generator().manual_seed(derived_seed(int(seed), name))
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=g)[:kept]] = True
    return flat.view(shape)


class Masks:
    """Bool masks keyed by layer name (the module's qualified name; the weight is `.weight`)."""

    def __init__(self, masks: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None):
        self.masks: dict[str, torch.Tensor] = {k: v.to(torch.bool) for k, v in masks.items()}
        self.meta: dict[str, str] = dict(meta or {})
        self._bound: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # --- construction -------------------------------------------------------------------
    @classmethod
    def random(cls, plan: DensityPlan, seed: int, sampling: str = "exact") -> Masks:
        """Masks with the plan's per-layer counts (exact) or densities (bernoulli)."""
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown mask sampling {sampling!r}; valid choices: {SAMPLINGS}")
        out = {}
        for layer, k in zip(plan.layers, plan.kept):
            if sampling == "exact":
                out[layer.name] = random_mask(layer.shape, k, seed, layer.name)
            else:
                g = torch.Generator().manual_seed(derived_seed(int(seed), layer.name))
                p = torch.full(layer.shape, k / layer.numel)
                out[layer.name] = torch.bernoulli(p, generator=g).bool()
        meta = {
            "scheme": plan.scheme,
            "target_density": repr(plan.target_density),
            "seed": str(seed),
            "sampling": sampling,
        }
        return cls(out, meta)

    @classmethod
    def dense(cls, model: nn.Module) -> Masks:
        return cls(
            {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model)},
            {"scheme": "dense"},
        )

    # --- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.masks)

    def names(self) -> list[str]:
        return list(self.masks)

    def kept(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self.masks.items()}

    def total(self) -> int:
        return sum(v.numel() for v in self.masks.values())

    def density(self) -> float:
        return sum(self.kept().values()) / self.total()

    def equals(self, other: Masks) -> bool:
        return self.masks.keys() == other.masks.keys() and all(
            torch.equal(v.cpu(), other.masks[k].cpu()) for k, v in self.masks.items()
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.masks.items()}

    # --- application ---------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError unless the model's prunable layers match these masks exactly."""
        layers = dict(prunable_layers(model))
        problems = []
        for name in self.masks.keys() - layers.keys():
            problems.append(f"mask {name!r} has no layer in the model")
        for name in layers.keys() - self.masks.keys():
            problems.append(f"layer {name!r} has no mask")
        for name in self.masks.keys() & layers.keys():
            ms, ws = tuple(self.masks[name].shape), tuple(layers[name].weight.shape)
            if ms != ws:
                problems.append(f"layer {name!r}: mask shape {ms} != weight shape {ws}")
        if problems:
            shown = "; ".join(sorted(problems)[:8])
            more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
            raise ValueError(f"masks do not fit this model: {shown}{more}")

    def bind(self, model: nn.Module) -> None:
        """Pair every mask with its weight tensor, as float masks on the weight's device,
        dtype and memory format, so `apply_` is one fused op. Call again after moving the
        model or changing its memory format."""
        self.check_model(model)
        layers = dict(prunable_layers(model))
        weights, floats = [], []
        for name, mask in self.masks.items():
            w = layers[name].weight
            weights.append(w)
            floats.append(torch.empty_like(w).copy_(mask))
        self._bound = (weights, floats)

    def bound(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(weights, float masks) paired by `bind`, in the same order."""
        if self._bound is None:
            raise RuntimeError("Masks.bind(model) first")
        return self._bound

    def sync_from_bound(self) -> None:
        """Bool masks <- the bound float masks (after dynamic sparse training changed them)."""
        if self._bound is None:
            return
        for name, f in zip(self.masks, self._bound[1]):
            self.masks[name] = (f.detach() > 0).cpu().view(self.masks[name].shape)

    @torch.no_grad()
    def set_(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace every layer's mask (same names and shapes), the bound float masks in place,
        so whatever holds them (the gradient flow, an optimizer hook) sees the new ones."""
        if masks.keys() != self.masks.keys():
            raise ValueError(
                f"new masks name {sorted(masks)[:4]}..., these masks {sorted(self.masks)[:4]}..."
            )
        for name, new in masks.items():
            if tuple(new.shape) != tuple(self.masks[name].shape):
                raise ValueError(
                    f"layer {name!r}: new mask shape {tuple(new.shape)} != "
                    f"{tuple(self.masks[name].shape)}"
                )
            self.masks[name] = new.detach().to(torch.bool).cpu()
        if self._bound is not None:
            for name, f in zip(self.masks, self._bound[1]):
                f.copy_(self.masks[name].to(f.device).view(f.shape))

    @torch.no_grad()
    def apply_(self, model: nn.Module | None = None) -> None:
        """w <- w * m for every masked weight, in place, with one `torch._foreach_mul_`."""
        if model is not None or self._bound is None:
            if model is None:
                raise RuntimeError("Masks.apply_() needs a model the first time (or bind())")
            self.bind(model)
        weights, floats = self._bound
        torch._foreach_mul_(weights, floats)

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write one Parquet file (atomic: temp file then rename)."""
        path = Path(path)
        rows: dict[str, list] = {
            k: [] for k in ("name", "shape", "numel", "density", "kept", "bits", "sha256")
        }
        for name, m in self.masks.items():
            bits = np.packbits(m.cpu().numpy().reshape(-1)).tobytes()
            kept = int(m.sum())
            rows["name"].append(name)
            rows["shape"].append(list(m.shape))
            rows["numel"].append(m.numel())
            rows["density"].append(kept / m.numel())
            rows["kept"].append(kept)
            rows["bits"].append(bits)
            rows["sha256"].append(hashlib.sha256(bits).hexdigest())
        schema = pa.schema(
            [
                ("name", pa.string()),
                ("shape", pa.list_(pa.int64())),
                ("numel", pa.int64()),
                ("density", pa.float64()),
                ("kept", pa.int64()),
                ("bits", pa.binary()),
                ("sha256", pa.string()),
            ],
            metadata={
                # the file format's keys (not a module path): files of every release read alike
                "rp_tune.masks": json.dumps(self.meta),
                "rp_tune.masks.sha256": _file_digest(json.dumps(self.meta), rows),
            },
        )
        table = pa.table(rows, schema=schema)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> Masks:
        """Read a masks file, verify every checksum and count, and (given a model) its fit."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no masks file at {path}")
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path} is not a readable masks Parquet file: {e}") from e
        need = {"name", "shape", "numel", "kept", "bits", "sha256"}
        if not need <= set(table.column_names):
            raise ValueError(f"{path}: missing columns {sorted(need - set(table.column_names))}")
        masks = {}
        for row in table.to_pylist():
            name, shape, bits = row["name"], tuple(row["shape"]), row["bits"]
            if hashlib.sha256(bits).hexdigest() != row["sha256"]:
                raise ValueError(f"{path}: checksum mismatch for layer {name!r}")
            numel = int(np.prod(shape))
            if numel != row["numel"]:
                raise ValueError(f"{path}: layer {name!r} shape {shape} != numel {row['numel']}")
            arr = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=numel)
            if int(arr.sum()) != row["kept"]:
                raise ValueError(
                    f"{path}: layer {name!r} holds {int(arr.sum())} ones, "
                    f"the file says {row['kept']}"
                )
            masks[name] = torch.from_numpy(arr.astype(bool)).view(shape)
        metadata = table.schema.metadata or {}
        raw_meta = metadata.get(b"rp_tune.masks", b"{}").decode()
        digest = metadata.get(b"rp_tune.masks.sha256")
        if digest is not None and digest.decode() != _file_digest(raw_meta, table.to_pydict()):
            raise ValueError(
                f"{path}: checksum mismatch of the metadata (scheme, seed, target density) or "
                "of the layer list"
            )
        try:
            out = cls(masks, json.loads(raw_meta))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable masks metadata: {e}") from None
        if model is not None:
            out.check_model(model)
        return out


def _file_digest(meta_json: str, rows: Mapping[str, list]) -> str:
    """sha256 over the metadata and every layer's name, shape, count and bits checksum: what
    the per-layer checksums leave uncovered (files written before it existed have none)."""
    h = hashlib.sha256(meta_json.encode())
    for name, shape, kept, sha in zip(rows["name"], rows["shape"], rows["kept"], rows["sha256"]):
        h.update(f"\n{name}:{list(shape)}:{int(kept)}:{sha}".encode())
    return h.hexdigest()


def density_report(masks: Masks, model: nn.Module | None = None) -> list[dict]:
    """One row per layer (name, kind, shape, numel, kept, density) plus a `total` row."""
    kinds = {n: type(m).__name__ for n, m in prunable_layers(model)} if model is not None else {}
    rows = []
    for name, m in masks.masks.items():
        kept = int(m.sum())
        rows.append(
            {
                "layer": name,
                "kind": kinds.get(name, "conv" if m.dim() == 4 else "linear"),
                "shape": "x".join(map(str, m.shape)),
                "numel": m.numel(),
                "kept": kept,
                "density": kept / m.numel(),
            }
        )
    total, kept = masks.total(), sum(r["kept"] for r in rows)
    rows.append(
        {
            "layer": "total",
            "kind": "",
            "shape": "",
            "numel": total,
            "kept": kept,
            "density": kept / total if total else 0.0,
        }
    )
    return rows


def format_report(rows: Iterable[dict]) -> str:
    """Fixed-width text table of `density_report` rows, for logs."""
    rows = list(rows)
    head = f"{'layer':<34} {'kind':<7} {'shape':<16} {'numel':>10} {'kept':>10} {'density':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['layer']:<34} {r['kind']:<7} {r['shape']:<16} {r['numel']:>10} "
            f"{r['kept']:>10} {r['density']:>8.4f}"
        )
    return "\n".join(lines)


def report_table(rows: Iterable[dict]) -> pa.Table:
    """`density_report` rows as an Arrow table (write it with pyarrow.csv or parquet)."""
    return pa.Table.from_pylist(list(rows))
