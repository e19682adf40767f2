-- Managed OpenTofu/Terraform state (`backendType: system`): the HTTP backend the gateway serves
-- per tenant, environment and resource (docs/state-backend.md).
--
-- tf_state keeps history: every POST adds a row and a read takes the newest; the store keeps the
-- newest 20 rows of each resource and deletes older ones on each write. A DELETE adds a row with
-- `deleted` true and no state (what came before stays in the history).
CREATE TABLE tf_state (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    environment  text NOT NULL,
    resource     text NOT NULL,
    serial       bigint NOT NULL DEFAULT 0,
    lineage      text NOT NULL DEFAULT '',
    state        bytea,
    deleted      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    run_id       text NOT NULL DEFAULT '',
    actor        text NOT NULL DEFAULT ''
);
CREATE INDEX tf_state_newest ON tf_state (tenant, environment, resource, id DESC);

-- At most one lock per resource; `info` is the lock info the client sent (ID, Operation, Who, ...).
CREATE TABLE tf_state_lock (
    tenant       text NOT NULL,
    environment  text NOT NULL,
    resource     text NOT NULL,
    lock_id      text NOT NULL,
    info         jsonb NOT NULL DEFAULT '{}',
    locked_at    timestamptz NOT NULL DEFAULT now(),
    run_id       text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, environment, resource)
);
