"""The one error root of tickfold and its hierarchy.

    TickfoldError
    ├── ConfigError            bad configuration; names the offending key
    ├── KeyFormatError         an input that would break a Redis key (empty part, ':' ...)
    ├── UnknownExchange        an exchange id that is not known / not enabled
    ├── FrameDecodeError       a raw frame that cannot be decoded (goes to the dead-letter stream)
    ├── ProjectionConflict     a projection changed under us between read and commit (retry)
    ├── MigrationError         a migration failed; the database is left as it was
    ├── ServerStartError       an embedded Redis/PostgreSQL server could not be started
    ├── StoreUnavailable       Redis/Postgres cannot be reached (the retryable one)
    │   (defined beside the code that raises them:)
    ├── LeaseLost              processors/leases.py: another instance owns the partition now
    ├── AppendRejected         streams/adapters/sink.py: Redis refused an XADD of a raw frame
    ├── RestError (+ kinds)    streams/rest/errors.py: an exchange's REST API failed
    ├── IndicatorStateError    projections/indicators/state.py: a stored kernel state doesn't fit
    ├── NoPosition             control/positions.py: closing a position that isn't open
    ├── NotTradable, NoManualAdd   control/manual.py: a manual add refused / a removal of none
    ├── ArchiveMissing         streams/archive_store.py: the archive tables are not there (migrate)
    ├── ReplayNoData           processors/replay.py: a replay range with nothing in it
    ├── ReplayGapError         processors/replay_source.py: frames of the range are neither stored nor archived
    ├── ExportFormatError      processors/replay_export.py: an export file type tickfold can't write
    └── RebuildRefused         processors/replay_rebuild.py: a processor still holds a partition

Lower-level errors are translated at the edge (``raise X(...) from exc``); nothing outside
``streams/`` imports ``redis.exceptions``.
"""

from __future__ import annotations


class TickfoldError(Exception):
    """Root of every error tickfold raises on purpose."""


class ConfigError(TickfoldError):
    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class KeyFormatError(TickfoldError, ValueError):
    pass


class UnknownExchange(TickfoldError):
    pass


class FrameDecodeError(TickfoldError):
    pass


class ProjectionConflict(TickfoldError):
    pass


class MigrationError(TickfoldError):
    pass


class ServerStartError(TickfoldError):
    pass


class StoreUnavailable(TickfoldError):
    pass
