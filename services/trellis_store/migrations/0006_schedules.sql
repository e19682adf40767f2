-- Trellis state store, schema 6: environments' schedules (docs/schedules.md). One row per
-- (tenant, environment, schedule) says when it is next due. A firing is claimed by moving
-- next_due_at on from the value read (UPDATE ... WHERE next_due_at = <read>), in the transaction
-- that records its run: two replicas, or one restarted, never fire one slot twice, and slots
-- missed while every replica was down are one firing when one comes back.
CREATE TABLE schedules (
    tenant            text NOT NULL,
    environment       text NOT NULL,
    name              text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('cron', 'ttl')),
    definition        text NOT NULL,              -- digest of its cadence: a change re-arms it
    spec              jsonb NOT NULL,             -- trellis_templates.schedules.EffectiveSchedule, as last synced
    -- cron: the next slot; ttl: the expiry (`expires_at` in the API). NULL: not armed (a time to
    -- live before the environment's first successful deploy, and after it fired).
    next_due_at       timestamptz,
    optout_until      timestamptz,                -- cron: slots before it are skipped (opt-outs)
    armed_by_run      text NOT NULL DEFAULT '',   -- ttl: the deploy run whose success set the expiry
    last_due_at       timestamptz,
    last_fired_at     timestamptz,
    last_run_id       text NOT NULL DEFAULT '',
    published_run_id  text NOT NULL DEFAULT '',   -- the last fired run known published on the bus
    optouts           integer NOT NULL DEFAULT 0, -- opt-outs through the API (`trellis env extend`)
    optout_seconds    bigint NOT NULL DEFAULT 0,  -- their total
    document_optouts  integer NOT NULL DEFAULT 0, -- the Environment's scheduleOptouts applied so far
    warned_due_at     timestamptz,                -- ttl: the expiry the expiring warning was given for
    synced_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant, environment, name)
);
CREATE INDEX schedules_due ON schedules (next_due_at) WHERE next_due_at IS NOT NULL;

-- The environment revision whose schedules are in `schedules`: a PUT (a new revision) re-syncs.
CREATE TABLE schedule_syncs (
    tenant       text NOT NULL,
    environment  text NOT NULL,
    revision     bigint NOT NULL,
    problems     jsonb NOT NULL DEFAULT '[]',     -- why some of its schedules do not run
    synced_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant, environment)
);
