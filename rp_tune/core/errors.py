"""The error of a bad config value, shared by the config and the sparse-training methods'
checks (which sit below the config)."""

from __future__ import annotations

import typing
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and the valid choices."""


def fail(key: str, value: Any, valid: str) -> typing.NoReturn:
    """Raise the one message of a bad value: `key=value is invalid; valid: ...`."""
    raise ConfigError(f"{key}={value!r} is invalid; valid: {valid}")


class SweepError(ValueError):
    """A sweep cannot start: bad space, override or storage; nothing was started or written."""
