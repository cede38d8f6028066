-- The positions table (SPEC §3): one row per GPS fix, unique on (device_id, ts).
-- The primary key's index also serves "latest fix per device" (a backward index scan), so no
-- second index is created: every index costs ingest speed.
CREATE TABLE IF NOT EXISTS positions (
    device_id   text             NOT NULL,
    ts          timestamptz      NOT NULL,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    altitude    double precision,
    angle       double precision,
    speed       double precision,
    satellites  integer,
    priority    smallint,
    attributes  jsonb            NOT NULL DEFAULT '{}',
    faulty      boolean          NOT NULL DEFAULT false,
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT positions_pkey PRIMARY KEY (device_id, ts)
);

-- Where TimescaleDB is installed and preloaded, make positions a hypertable on ts. On plain
-- PostgreSQL the same table works as an ordinary one. Chunk interval, compression and retention
-- are applied by the processor from configuration after migrations (they are operator policy,
-- not schema).
-- The extension's functions are called through its own schema, so this works whatever the
-- connection's search_path is (e.g. a per-tenant or per-test schema).
DO $$
DECLARE
    ts_schema name;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        SELECT n.nspname INTO ts_schema
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'timescaledb';
        EXECUTE format(
            'SELECT %I.create_hypertable(%L::regclass, %L, if_not_exists => true, '
            'migrate_data => true)',
            ts_schema, 'positions', 'ts');
    END IF;
END
$$;
