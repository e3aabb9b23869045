-- EXC-02: user_exchanges references exchanges(id) by foreign key.
-- A refactor of a live database: if a legacy user_exchanges exists with a free-text exchange name
-- (column "exchange" or "exchange_name"), add exchange_id, backfill it by matching the name against
-- exchanges.id, display_name and aliases (case- and space-insensitive), then add the constraint and
-- drop the text column, keeping every row. A name that maps to no exchange aborts the migration with
-- the offending values listed; the transaction rolls back and the database is unchanged.

DO $migration$
DECLARE
    legacy_column text;
    unmapped      text;
BEGIN
    IF to_regclass('public.user_exchanges') IS NULL THEN
        CREATE TABLE user_exchanges (
            id          bigserial PRIMARY KEY,
            user_id     text NOT NULL,
            exchange_id text NOT NULL REFERENCES exchanges (id),
            label       text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (user_id, exchange_id)
        );
        RETURN;
    END IF;

    SELECT column_name INTO legacy_column
      FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name = 'user_exchanges'
       AND column_name IN ('exchange', 'exchange_name')
     ORDER BY column_name
     LIMIT 1;

    IF legacy_column IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_schema = 'public' AND table_name = 'user_exchanges'
                          AND column_name = 'exchange_id') THEN
            RAISE EXCEPTION 'user_exchanges exists but has neither an exchange name column nor exchange_id';
        END IF;
        RETURN;
    END IF;

    ALTER TABLE user_exchanges ADD COLUMN IF NOT EXISTS exchange_id text;

    EXECUTE format($sql$
        UPDATE user_exchanges u
           SET exchange_id = e.id
          FROM exchanges e
         WHERE lower(btrim(u.%1$I::text)) = e.id
            OR lower(btrim(u.%1$I::text)) = lower(e.display_name)
            OR lower(btrim(u.%1$I::text)) = ANY (e.aliases)
    $sql$, legacy_column);

    EXECUTE format($sql$
        SELECT string_agg(DISTINCT quote_literal(coalesce(%1$I::text, 'NULL')), ', ')
          FROM user_exchanges WHERE exchange_id IS NULL
    $sql$, legacy_column) INTO unmapped;

    IF unmapped IS NOT NULL THEN
        RAISE EXCEPTION 'user_exchanges.% has exchange names that match no exchange: %', legacy_column, unmapped
            USING HINT = 'add the exchange to the exchanges table or an alias for it, or fix those rows, then migrate again';
    END IF;

    ALTER TABLE user_exchanges ALTER COLUMN exchange_id SET NOT NULL;
    ALTER TABLE user_exchanges
        ADD CONSTRAINT user_exchanges_exchange_id_fkey FOREIGN KEY (exchange_id) REFERENCES exchanges (id);
    EXECUTE format('ALTER TABLE user_exchanges DROP COLUMN %I', legacy_column);
END
$migration$;

CREATE INDEX IF NOT EXISTS user_exchanges_exchange_id_idx ON user_exchanges (exchange_id);
