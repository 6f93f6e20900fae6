"""The import path `rp_tune.sweep` of releases before the layered packages (0.1.0 at 6265fed).

Tune pickled those sweeps' callbacks as `rp_tune.sweep.TrackingCallback` and
`rp_tune.sweep.ConsoleCallback`; this module hands them (and every other name) to the new place,
`rp_tune.adapters.ray.sweep`, so such a sweep resumes under this release. New code imports the
new path.
"""

from typing import Any

from rp_tune.adapters.ray import sweep as _sweep


def __getattr__(name: str) -> Any:
    return getattr(_sweep, name)
