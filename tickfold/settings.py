"""Typed settings, read once: defaults < TOML file < environment < command-line flags.

Nothing else in tickfold reads ``os.environ``; the CLI builds one :class:`Settings` and passes it in.
A bad value fails at start-up with a :class:`ConfigError` naming the key (the environment variable,
the TOML key or the flag it came from). URLs may carry passwords: :func:`mask_url` hides them in
everything tickfold prints.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from projections.rollups import nests, plan
from projections.watermark import bucket_end
from tickfold.errors import ConfigError

ENV_PREFIX = "TICKFOLD_"
CONFIG_ENV = "TICKFOLD_CONFIG"

_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_PG_SCHEMES = {"postgres", "postgresql"}


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob tickfold has. ``None`` URLs mean: start private embedded servers."""

    redis_url: str | None = None
    database_url: str | None = None
    data_dir: str = ".tickfold"
    batch_size: int = 2000  # entries per partition per batch at most (a read takes what is there, up to this)
    block_ms: int = 1000
    candle_history: int = 5000
    backfill_history: int = 300  # closed candles per symbol/timeframe the warm-up backfills from REST
    backfill: bool = False  # `process` also runs the gap watch (REST backfill on start, reconnects and gaps)
    consumer: str = ""  # empty: {hostname}-{pid}
    partitions: int = 4  # raw-stream partitions per exchange (fixed once an exchange's first frame is written)
    lease_ttl_ms: int = 5000  # a dead processor's partitions (and pending entries) are claimed after this long
    exchange_lease_ttl_ms: int = 5000  # serve: a dead instance's exchanges are taken over after this long
    max_deliveries: int = 10  # an entry delivered more often than this goes to the dead-letter stream
    stream_max_len: int = 1_000_000  # raw entries kept per partition; never trims what is not yet acknowledged
    stream_max_age_ms: int = 7 * 86_400_000  # older raw entries are trimmed (once acknowledged)
    trade_candles: str = "coinbase:1m"  # exchange:timeframe pairs built from trades (comma-separated)
    rollups: str = "5m,15m,1h,4h,1d"  # timeframes folded from closed 1m candles (except an exchange's native ones)
    indicators: bool = True  # `process` runs the indicator processor beside the candle processor
    indicator_window: int = 1000  # closed candles each MACD-V recompute reads (enough to forget the seed)
    indicator_history: int = 1000  # MACD-V points kept per series
    close_grace_ms: int = 5000  # an open candle closes once event time passes its end plus this
    connection_state: bool = True  # `process` folds the control stream into Postgres (EXC-04) when it has one
    heartbeat_write_every_s: float = 30.0  # connection state: last_heartbeat recorded at most this often
    log_level: str = "INFO"
    api_token: str = ""  # bearer token of the API's control endpoints; empty: they are refused (403)
    api_read_open: bool = True  # False: the API's read endpoints and /ws need the token too
    tier1: str = ""  # serve refreshes Tier 1: exchange:N[:QUOTE|QUOTE...] per exchange, comma-separated
    tier1_refresh_s: float = 3600.0  # how often serve re-ranks each exchange of ``tier1`` (REST weight: ~80)
    archive: bool = False  # serve / process also run the archiver (streams -> PostgreSQL); trimming waits for it
    archive_retention_days: int = 0  # UTC days of archive kept (today included); 0 keeps everything
    archive_batch_size: int = 5000  # entries per archive block at most (read 1000 at a time, gathered by the linger)
    archive_linger_ms: int = 2000  # a live stream's entries wait at most this long to fill a block

    def __post_init__(self) -> None:
        if self.redis_url is not None:
            _check_url("redis_url", self.redis_url, _REDIS_SCHEMES)
        if self.database_url is not None:
            _check_url("database_url", self.database_url, _PG_SCHEMES)
        positive = ("batch_size", "block_ms", "candle_history", "backfill_history", "partitions", "lease_ttl_ms")
        for name in (
            *positive,
            "max_deliveries",
            "stream_max_len",
            "stream_max_age_ms",
            "indicator_window",
            "indicator_history",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if ":" in self.consumer or any(ch.isspace() for ch in self.consumer):
            raise ConfigError("consumer", f"must be a name without ':' or spaces, got {self.consumer!r}")
        for pair in filter(None, self.trade_candles.split(",")):
            ex, sep, tf = pair.strip().partition(":")
            if not sep or not ex or not tf or not tf[:-1].isdigit() or tf[-1] not in "mhdwM":
                raise ConfigError("trade_candles", f"expected exchange:timeframe pairs like coinbase:1m, got {pair!r}")
        for tf in filter(None, (t.strip() for t in self.rollups.split(","))):
            try:
                ok = tf != "1m" and nests("1m", tf)
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError("rollups", f"{tf!r} is not a timeframe that 1m candles roll up into")
        self.tier1_plan()  # raises ConfigError("tier1", ...) on a malformed entry
        if self.tier1_refresh_s < 60:
            raise ConfigError("tier1_refresh_s", f"must be >= 60 (REST rate limits), got {self.tier1_refresh_s}")
        if self.heartbeat_write_every_s < 0:
            raise ConfigError("heartbeat_write_every_s", f"must be >= 0, got {self.heartbeat_write_every_s}")
        if self.archive_retention_days < 0:
            days = self.archive_retention_days
            raise ConfigError("archive_retention_days", f"must be >= 0 (0 keeps everything), got {days}")
        if self.archive_batch_size <= 0:
            raise ConfigError("archive_batch_size", f"must be > 0, got {self.archive_batch_size}")
        if self.archive_linger_ms < 0:
            raise ConfigError(
                "archive_linger_ms", f"must be >= 0 (0 writes every batch at once), got {self.archive_linger_ms}"
            )
        if self.close_grace_ms < 0:
            raise ConfigError("close_grace_ms", f"must be >= 0, got {self.close_grace_ms}")
        if self.exchange_lease_ttl_ms < 3 * 100:
            raise ConfigError(
                "exchange_lease_ttl_ms",
                f"must be >= 300 (leases are renewed every third of it), got {self.exchange_lease_ttl_ms}",
            )
        if self.lease_ttl_ms < 3 * 100:
            raise ConfigError(
                "lease_ttl_ms", f"must be >= 300 (leases are renewed every third of it), got {self.lease_ttl_ms}"
            )

    def trade_timeframes(self, exchange_id: str) -> tuple[str, ...]:
        """The timeframes of ``exchange_id`` built from its trades (``trade_candles``)."""
        return tuple(
            tf for ex, _, tf in (p.partition(":") for p in self.trade_candles.split(",") if p) if ex == exchange_id
        )

    def tier1_plan(self) -> dict[str, tuple[int, tuple[str, ...] | None]]:
        """``tier1`` parsed: exchange -> (N, the quote assets counted or None for all USD-convertible ones)."""
        out: dict[str, tuple[int, tuple[str, ...] | None]] = {}
        for entry in filter(None, (e.strip() for e in self.tier1.split(","))):
            ex, _, rest = entry.partition(":")
            n_text, _, quotes = rest.partition(":")
            if not ex or not n_text.isdigit() or int(n_text) <= 0:
                msg = f"expected exchange:N[:QUOTE|QUOTE...] (binance:20:USDT|USDC), got {entry!r}"
                raise ConfigError("tier1", msg)
            if ex in out:
                raise ConfigError("tier1", f"exchange {ex!r} is listed twice")
            chosen = tuple(q.strip().upper() for q in quotes.split("|") if q.strip()) if quotes else None
            if quotes and not chosen:
                raise ConfigError("tier1", f"empty quote list in {entry!r}")
            out[ex] = (int(n_text), chosen)
        return out

    def rollup_plan(self, exchange_id: str, native: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
        """(target, source) timeframes to roll up for an exchange, shortest target first; the exchange's
        native timeframes (streamed candles) are not rolled up."""
        targets = [tf for tf in filter(None, (t.strip() for t in self.rollups.split(","))) if tf not in native]
        chosen = plan("1m", targets)
        return tuple(sorted(chosen.items(), key=lambda kv: bucket_end(kv[0], 0)))

    def consumer_name(self) -> str:
        """This process's consumer name in the groups: ``consumer``, or ``{hostname}-{pid}``."""
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str],
        *,
        config_file: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from a TOML file (``--config`` or ``TICKFOLD_CONFIG``), the environment
        (``TICKFOLD_<FIELD>``) and explicit overrides (CLI flags), later sources winning."""
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        path = config_file or environ.get(CONFIG_ENV)
        if path:
            for key, value in _read_toml(path).items():
                values[key] = value
                origin[key] = f"{path}: {key}"
        fields = set(cls.__struct_fields__)
        for field in fields:
            env_key = ENV_PREFIX + field.upper()
            if env_key in environ:
                values[field] = environ[env_key]
                origin[field] = env_key
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
                origin[key] = "--" + key.replace("_", "-")
        for key in values:
            if key not in fields:
                raise ConfigError(origin.get(key, key), f"unknown setting (known: {', '.join(sorted(fields))})")
        try:
            return msgspec.convert(values, cls, strict=False)
        except ConfigError as exc:
            raise ConfigError(origin.get(exc.key, exc.key), str(exc).split(": ", 1)[1]) from None
        except msgspec.ValidationError as exc:
            key = _field_of(str(exc))
            raise ConfigError(origin.get(key, key), _strip_path(str(exc))) from None

    def masked(self) -> dict[str, Any]:
        """The settings as a dict fit for printing: passwords replaced by ``***``."""
        out = msgspec.structs.asdict(self)
        for key in ("redis_url", "database_url"):
            if out[key] is not None:
                out[key] = mask_url(out[key])
        if out["api_token"]:
            out["api_token"] = "***"
        return out


def mask_url(url: str) -> str:
    """Replace the password of a URL (if any) with ``***``; everything else stays readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    userinfo, sep, hostport = parts.netloc.rpartition("@")
    if not sep or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, parts.fragment))


def _check_url(key: str, url: str, schemes: set[str]) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise ConfigError(key, f"not a valid URL ({mask_url(url)}): {exc}") from None
    if parts.scheme not in schemes:
        raise ConfigError(
            key, f"scheme must be one of {', '.join(sorted(schemes))}, got {parts.scheme!r} in {mask_url(url)}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(key, f"no host in {mask_url(url)}")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(key, f"port out of range in {mask_url(url)}")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(CONFIG_ENV, f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    section = data.get("tickfold", data)
    if not isinstance(section, dict):
        raise ConfigError(path, "[tickfold] must be a table")
    return section


def _field_of(message: str) -> str:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.batch_size`"
    marker = "at `$."
    if marker in message:
        return message.rsplit(marker, 1)[1].split("`", 1)[0].split("[", 1)[0]
    return "settings"


def _strip_path(message: str) -> str:
    return message.split(" - at `", 1)[0]
