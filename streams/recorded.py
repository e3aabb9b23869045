"""Reading recorded WebSocket sessions (the ``realdata/`` formats) as (frame, receive time) pairs.

Two formats, told apart by the first line:

* ``*.frames.jsonl`` — one raw text frame per line, byte for byte; it carries no receive time, so
  the ingest time stands in (receive time is only ever used for lag metrics, never in a fold).
* ``*.recording.jsonl`` — recorder lines: ``{"t":"recv","ts":<unix s>,"data":"<frame>"}`` (format 2)
  or ``{"recv_ts":<unix s>,"frame":"<frame>"}`` (format 1); connect/send/header lines are skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

_RECORDER_KEYS = ("connect_ts", "recv_ts", "sent_ts")


def _is_recording(first: bytes) -> bool:
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    if obj.get("t") in ("header", "connect", "send", "recv"):
        return True
    return any(k in obj for k in _RECORDER_KEYS)


def read_frames(path: Path, *, now_ns: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Yield (raw frame bytes, receive time ns) for every frame line of ``path``."""
    recv_ns = now_ns if now_ns is not None else time.time_ns()
    with path.open("rb") as fh:
        first = fh.readline()
        recording = _is_recording(first.strip())
        fh.seek(0)
        for lineno, line in enumerate(fh, 1):
            frame = line.rstrip(b"\r\n")
            if not frame.strip():
                continue
            if not recording:
                yield frame, recv_ns
                continue
            try:
                obj = json.loads(frame)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a recorder line: {exc}") from None
            if obj.get("t") == "recv":
                yield obj["data"].encode(), int(float(obj["ts"]) * 1e9)
            elif "recv_ts" in obj:
                yield obj["frame"].encode(), int(float(obj["recv_ts"]) * 1e9)
