"""A prunable layer as shapes alone: what the density schemes read and the models describe."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    """A prunable weight tensor: qualified module name and weight shape.

    shape is (c_out, c_in, kh, kw) for a conv and (out, in) for a linear layer.
    """

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kind(self) -> str:
        return "conv" if len(self.shape) == 4 else "linear"
