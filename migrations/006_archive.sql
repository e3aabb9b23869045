-- The archive: raw frames, control events, candle closes and alerts moved from Redis streams into
-- PostgreSQL in bulk (processors/archiver.py), so the streams can be trimmed and replays still reach back.
--
-- One row is one *block*: consecutive entries of one stream and one UTC day (the day of the entry ids,
-- i.e. Redis's clock when the entry was added), encoded column-wise and compressed with zstd
-- (streams/archive_codec.py). Blocks of a few thousand frames take 30-80 bytes per frame instead of
-- 230-620 bytes raw.
--
-- Partitions: by day (RANGE), each day by source (LIST: the exchange of the stream, or 'control'):
-- archive_blocks_dYYYYMMDD and archive_blocks_dYYYYMMDD_<source>, created on demand by the archiver.
-- Retention drops whole days (DROP TABLE of a day partition); a scan of one stream touches only the
-- days asked for and, in each, only its source's table.

CREATE TABLE archive_blocks (
    stream    text    NOT NULL,  -- the Redis stream key: frames:binance:p3, closes:binance, alerts:binance, control
    source    text    NOT NULL,  -- its exchange, or 'control' (the sub-partition key)
    day       date    NOT NULL,  -- UTC day of every entry id in the block (the partition key)
    first_ms  bigint  NOT NULL,  -- the first entry id (ms-seq) ...
    first_seq bigint  NOT NULL,
    last_ms   bigint  NOT NULL,  -- ... and the last one
    last_seq  bigint  NOT NULL,
    entries   integer NOT NULL CHECK (entries > 0),
    raw_bytes integer NOT NULL,  -- field names and values before encoding and compression
    payload   bytea   NOT NULL,  -- zstd of the encoded block
    PRIMARY KEY (stream, source, day, first_ms, first_seq)
) PARTITION BY RANGE (day);

-- How far each stream is archived: written in the same transaction as its blocks. Entries at or below
-- the position are redeliveries and are skipped, so a crash between the commit and the XACK archives
-- nothing twice. The position (and the running total) outlive retention.
CREATE TABLE archive_positions (
    stream     text        PRIMARY KEY,
    last_ms    bigint      NOT NULL DEFAULT 0,
    last_seq   bigint      NOT NULL DEFAULT 0,
    entries    bigint      NOT NULL DEFAULT 0,  -- entries archived in total
    updated_at timestamptz NOT NULL DEFAULT now()
);
