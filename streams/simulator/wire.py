"""Wire-level helpers of the simulator: WebSocket frame bytes, the exchanges' number and time formats.

Numbers are kept as integers scaled by a power of ten (``units``) so folds are exact and fast:
``fixed`` renders Binance style (always 8 decimals, ``"58001.03000000"``), ``plain`` renders Coinbase
style (trailing zeros dropped, ``"65091"``, ``"0.0015885"``).
Times: Coinbase ``timestamp`` and trade ``time`` are Go ``RFC3339Nano`` (fraction with trailing zeros
dropped); ``heartbeats.current_time`` is Go ``time.String()``.
"""

from __future__ import annotations

import calendar
import struct
import time
from decimal import Decimal

OP_TEXT = 0x1
_PACK_LEN2 = struct.Struct("!BBH").pack
_PACK_LEN3 = struct.Struct("!BBQ").pack


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A complete unmasked (server to client) WebSocket frame, FIN set."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _PACK_LEN2(first, 126, n) + payload
    return _PACK_LEN3(first, 127, n) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame built by :func:`ws_frame`."""
    n = frame[1] & 0x7F
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


# ------------------------------------------------------------------------------------------- numbers


def decimals(text: str) -> int:
    """Number of fraction digits written in a decimal string (``"0.00001000"`` → 8)."""
    _, _, frac = text.partition(".")
    return len(frac)


def significant_decimals(text: str) -> int:
    """Fraction digits that matter (``"0.00001000"`` → 5, ``"1.00"`` → 0)."""
    _, _, frac = text.partition(".")
    return len(frac.rstrip("0"))


def to_units(text: str, scale: int) -> int:
    """``text`` · 10^scale as an exact integer; ValueError if ``text`` has more significant digits."""
    value = Decimal(text).scaleb(scale)
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} has more than {scale} decimals")
    return int(value)


def _round_half_even(value: int, digits: int) -> int:
    d: int = 10**digits
    q, r = divmod(value, d)
    if r * 2 > d or (r * 2 == d and q % 2):
        q += 1
    return q


def fixed(value: int, scale: int, dp: int = 8) -> str:
    """``value`` · 10^-scale with exactly ``dp`` decimals (half-even rounding if ``scale > dp``)."""
    if scale > dp:
        value, scale = _round_half_even(value, scale - dp), dp
    value *= 10 ** (dp - scale)
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(value), 10**dp)
    return f"{sign}{q}.{r:0{dp}d}" if dp else f"{sign}{q}"


def plain(value: int, scale: int) -> str:
    """``value`` · 10^-scale without trailing zeros (and without a dot when whole)."""
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(value), 10**scale)
    if r == 0:
        return f"{sign}{q}"
    return f"{sign}{q}.{f'{r:0{scale}d}'.rstrip('0')}"


# --------------------------------------------------------------------------------------------- times

_NS = 1_000_000_000
_base_cache: dict[int, str] = {}


def _utc_base(seconds: int, sep: str) -> str:
    key = seconds * 2 + (sep == " ")
    text = _base_cache.get(key)
    if text is None:
        if len(_base_cache) > 4096:
            _base_cache.clear()
        text = time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.gmtime(seconds))
        _base_cache[key] = text
    return text


def rfc3339_nano(ns: int) -> str:
    """Go ``time.RFC3339Nano`` in UTC: ``2026-08-09T21:05:38.50436Z`` (fraction zeros trimmed)."""
    seconds, frac = divmod(ns, _NS)
    base = _utc_base(seconds, "T")
    if not frac:
        return base + "Z"
    return f"{base}.{f'{frac:09d}'.rstrip('0')}Z"


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of a UTC ``…Z`` timestamp with 0–9 fraction digits."""
    body = text.rstrip("Z")
    base, _, frac = body.partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds * _NS + int((frac + "000000000")[:9])


def go_time_string(ns: int, uptime_ns: int) -> str:
    """Go ``time.Now().String()``: ``2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341``."""
    seconds, frac = divmod(ns, _NS)
    base = _utc_base(seconds, " ")
    if frac:
        base = f"{base}.{f'{frac:09d}'.rstrip('0')}"
    up_s, up_frac = divmod(uptime_ns, _NS)
    return f"{base} +0000 UTC m=+{up_s}.{up_frac:09d}"
