"""Static sparse training: the random mask drawn at the start stays fixed (Liu et al. 2022)."""

from __future__ import annotations

from rp_tune.methods.base import SparseTraining


class FixedMask(SparseTraining):
    """Every hook of the protocol as it is: the masks are re-applied after each step."""
