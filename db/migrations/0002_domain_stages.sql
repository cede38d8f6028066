-- The racing domain's bookkeeping (docs/racing-domain.md): for each stage, the fingerprint of
-- the definitions its stored timing rows were last rebuilt from, and a version counter bumped
-- at every rebuild. An evaluation compares it, under the stage's pair locks, with the
-- definitions it was given (src/processor/domain/evaluation.py): so a stale definition can never
-- overwrite a rebuild. The processor owns this table; stage_id is text so that it does not
-- depend on the type Directus gave stages.id.
CREATE TABLE IF NOT EXISTS domain_stages (
    stage_id    text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    version     bigint      NOT NULL DEFAULT 1,
    rebuilt_at  timestamptz NOT NULL DEFAULT now()
);
