-- The racing data model, part 2 of 2: what a Directus schema snapshot cannot express.
-- Apply after `directus schema apply ... snapshot.json`, to the Directus database, then restart
-- Directus (it caches the schema and the permissions):
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/directus/racing.sql
-- Safe to run again: every statement replaces what an earlier run made. Checked against
-- Directus 11.3.5 (tests/integration/system/test_directus_real.py); docs/racing-domain.md says why each part is
-- here rather than in the snapshot.
BEGIN;

-- 1. Column types Directus cannot create. Its "Float" is PostgreSQL `real` (24-bit mantissa:
--    a latitude to about 0.5 m, a crossing time to tens of ms at speed); the processor's
--    geometry and the timing accuracy it promises need `double precision`. Its "JSON" is `json`;
--    `jsonb` compares and indexes. snapshot.json records these types, so applying it again
--    leaves them alone.
ALTER TABLE controls
    ALTER COLUMN lat1 TYPE double precision,
    ALTER COLUMN lon1 TYPE double precision,
    ALTER COLUMN lat2 TYPE double precision,
    ALTER COLUMN lon2 TYPE double precision,
    ALTER COLUMN latitude TYPE double precision,
    ALTER COLUMN longitude TYPE double precision,
    ALTER COLUMN validate_radius_m TYPE double precision;
ALTER TABLE speed_zones
    ALTER COLUMN limit_kmh TYPE double precision,
    ALTER COLUMN tolerance_kmh TYPE double precision,
    ALTER COLUMN tolerance_kmh SET DEFAULT 0,
    ALTER COLUMN min_duration_s TYPE double precision,
    ALTER COLUMN min_duration_s SET DEFAULT 0,
    ALTER COLUMN penalties TYPE jsonb USING penalties::jsonb;
ALTER TABLE io_mappings
    ALTER COLUMN multiplier TYPE double precision,
    ALTER COLUMN multiplier SET DEFAULT 1;
ALTER TABLE timing_records
    ALTER COLUMN speed_kmh TYPE double precision,
    ALTER COLUMN distance_m TYPE double precision;
ALTER TABLE speed_violations
    ALTER COLUMN max_speed_kmh TYPE double precision,
    ALTER COLUMN excess_kmh TYPE double precision,
    ALTER COLUMN distance_m TYPE double precision;
ALTER TABLE alerts
    ALTER COLUMN latitude TYPE double precision,
    ALTER COLUMN longitude TYPE double precision,
    ALTER COLUMN details DROP DEFAULT,
    ALTER COLUMN details TYPE jsonb USING details::jsonb,
    ALTER COLUMN details SET DEFAULT '{}';

-- 2. Natural keys: Directus makes single-column unique constraints only. The processor writes
--    with `INSERT ... ON CONFLICT (<natural key>)`, which needs exactly these.
ALTER TABLE timing_records DROP CONSTRAINT IF EXISTS timing_records_stage_id_entry_id_control_id_key;
ALTER TABLE timing_records ADD CONSTRAINT timing_records_stage_id_entry_id_control_id_key
    UNIQUE (stage_id, entry_id, control_id);
ALTER TABLE stage_results DROP CONSTRAINT IF EXISTS stage_results_stage_id_entry_id_key;
ALTER TABLE stage_results ADD CONSTRAINT stage_results_stage_id_entry_id_key
    UNIQUE (stage_id, entry_id);
ALTER TABLE speed_violations DROP CONSTRAINT IF EXISTS speed_violations_stage_id_entry_id_zone_id_started_at_key;
ALTER TABLE speed_violations ADD CONSTRAINT speed_violations_stage_id_entry_id_zone_id_started_at_key
    UNIQUE (stage_id, entry_id, zone_id, started_at);
ALTER TABLE io_mappings DROP CONSTRAINT IF EXISTS io_mappings_model_io_id_key;
ALTER TABLE io_mappings ADD CONSTRAINT io_mappings_model_io_id_key UNIQUE (model, io_id);

-- 3. One open alert per entry and kind, whatever the number of processor instances: the
--    processor raises with `ON CONFLICT (entry_id, kind) WHERE cleared_at IS NULL DO NOTHING`.
--    Directus cannot make a partial index. The second index serves the per-event reads.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (entry_id, kind) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_event ON alerts (event_id, raised_at);

-- 4. The values the processor understands (a typo in the Data Studio fails at once, instead of
--    a stage that is silently never evaluated).
ALTER TABLE controls DROP CONSTRAINT IF EXISTS controls_kind_check;
ALTER TABLE controls ADD CONSTRAINT controls_kind_check
    CHECK (kind IN ('start', 'finish', 'checkpoint', 'waypoint'));
ALTER TABLE stage_results DROP CONSTRAINT IF EXISTS stage_results_status_check;
ALTER TABLE stage_results ADD CONSTRAINT stage_results_status_check
    CHECK (status IN ('running', 'finished'));
ALTER TABLE alerts DROP CONSTRAINT IF EXISTS alerts_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check CHECK (kind IN ('stopped', 'no_signal'));

-- 5. The "Race control" role: reads the racing collections and events, writes nothing. The
--    SPA's users get it (Data Studio: User Directory -> user -> Role). The live WebSocket
--    authorizes a subscription with `GET /items/events/<id>` under the user's own session, so
--    the read permission on `events` is what lets a user watch an event. Directus keeps roles
--    and permissions in its system tables, outside schema snapshots, hence SQL (Directus 11's
--    access model: role -> directus_access -> policy -> directus_permissions). Fixed ids: the
--    rows are replaced, not duplicated, when this file runs again.
INSERT INTO directus_roles (id, name, icon, description)
VALUES ('7e16da81-d0d0-40c4-b37f-599d7fbe4b47', 'Race control', 'sports_score',
        'Reads the racing collections (results, timing, violations, alerts) and events.')
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description;
INSERT INTO directus_policies (id, name, icon, description, admin_access, app_access)
VALUES ('022273cc-e58a-4ac8-a570-fed8f894f88f', 'Race control', 'sports_score',
        'Read-only access to the racing collections and events.', false, true)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
    admin_access = false, app_access = true;
INSERT INTO directus_access (id, role, policy)
VALUES ('cad27a8f-04cb-48d5-aa50-41f23c077ea3', '7e16da81-d0d0-40c4-b37f-599d7fbe4b47',
        '022273cc-e58a-4ac8-a570-fed8f894f88f')
ON CONFLICT (id) DO NOTHING;
DELETE FROM directus_permissions WHERE policy = '022273cc-e58a-4ac8-a570-fed8f894f88f';
INSERT INTO directus_permissions (collection, action, permissions, fields, policy)
SELECT collection, 'read', '{}'::json, '*', '022273cc-e58a-4ac8-a570-fed8f894f88f'
FROM unnest(ARRAY['events', 'entries', 'devices', 'entry_devices', 'stages', 'controls',
                  'speed_zones', 'timing_records', 'stage_results', 'speed_violations',
                  'alerts']) AS c (collection);

COMMIT;
