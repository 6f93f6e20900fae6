"""Small text helpers shared by the console, planning and the report."""


def format_duration(seconds: float) -> str:
    """5h12m, 3m20s, 45s; 2d3h beyond a day."""
    s = int(round(max(seconds, 0.0)))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
