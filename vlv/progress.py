"""Rate and time-left figures for the periodic progress lines of long loops (training, scoring, captioning,
generation, answering): one wording everywhere, `... 1.8 images/s, ETA 4m05s`.

The estimate is the plain one: the work left at the rate measured so far. It is printed only when the total is
known and some work is done; until then the line says `ETA n/a` rather than guess.
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m, 3d04h: two units at most, never a fraction of a second."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta_seconds(done: float, total: float, elapsed_s: float) -> float | None:
    """Seconds left at the average rate so far; None when nothing is done yet or the total is unknown."""
    if total <= 0 or done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def eta_text(done: float, total: float, elapsed_s: float) -> str:
    left = eta_seconds(done, total, elapsed_s)
    return "ETA n/a" if left is None else f"ETA {format_duration(left)}"


def rate_and_eta(done: float, total: float, elapsed_s: float, unit: str) -> str:
    """`1.8 images/s, ETA 4m05s` for `done` of `total` units after `elapsed_s` seconds."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return f"{rate:.2f} {unit}/s, {eta_text(done, total, elapsed_s)}"

