"""The one way rp_tune derives a seed: a hash of named parts, never a shared global RNG.

Every random draw of a trial (initial weights, each layer's mask, batch order, augmentation,
DST regrowth, saliency batches, Gaussian OoD images) seeds its own generator from
`derived_seed(trial seed, what, ...)`, so adding a draw, a layer or an epoch never shifts the
others, and everything is reproducible from the config alone.
"""

from __future__ import annotations

import hashlib


def derived_seed(*parts: object) -> int:
    """63-bit seed from sha256 of the parts joined by ':', e.g. (trial seed, 'order', epoch)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
