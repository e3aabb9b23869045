"""The generated day's first hours are the whole day's frames of those hours (benchmarks generate only them)."""

from __future__ import annotations

import json

from tests.synthetic import DAY_START_MS, synthetic_day


def _start_ms(frame: bytes) -> int:
    from datetime import datetime

    first = min(t["time"] for t in json.loads(frame)["events"][0]["trades"])  # its own trades, not a repeat
    return int(datetime.fromisoformat(first).timestamp() * 1000)


def test_the_first_hours_are_the_days_frames_of_those_hours() -> None:
    day = synthetic_day(seed=5, every_ms=300_000)
    for hours in (0.5, 2.25, 7):
        end = DAY_START_MS + hours * 3_600_000
        part = synthetic_day(seed=5, every_ms=300_000, hours=hours)
        assert part == [f for f in day if _start_ms(f) < end]
        assert 0 < len(part) < len(day)
    assert synthetic_day(seed=5, every_ms=300_000) is not synthetic_day(seed=5, every_ms=300_000)  # new lists
