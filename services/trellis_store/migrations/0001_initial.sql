-- Trellis state store, schema 1. Every row carries its tenant; every query filters by it.
-- Applied once, in a transaction, under the migration advisory lock (trellis_store.migrate).

CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens, kept only as the SHA-256 of the token.
CREATE TABLE tokens (
    token_id    text PRIMARY KEY,
    sha256      text NOT NULL UNIQUE,
    tenant      text NOT NULL REFERENCES tenants (name),
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    "user"      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- A published bundle: the sources of every document published together.
CREATE TABLE template_bundles (
    tenant      text NOT NULL REFERENCES tenants (name),
    digest      text NOT NULL,
    sources     jsonb NOT NULL,            -- [{"path", "text"}]
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, digest)
);

-- One row per document version; a published version never changes (digest is its content's).
CREATE TABLE templates (
    tenant        text NOT NULL REFERENCES tenants (name),
    kind          text NOT NULL,
    name          text NOT NULL,
    version       text NOT NULL,
    digest        text NOT NULL,
    description   text NOT NULL DEFAULT '',
    path          text NOT NULL DEFAULT '',
    bundle        text NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    published_by  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, kind, name, version),
    FOREIGN KEY (tenant, bundle) REFERENCES template_bundles (tenant, digest)
);

CREATE TABLE environments (
    tenant            text NOT NULL REFERENCES tenants (name),
    name              text NOT NULL,
    template_name     text NOT NULL,
    template_version  text NOT NULL,
    variables         jsonb NOT NULL DEFAULT '{}',   -- plain values only
    sealed            jsonb NOT NULL DEFAULT '{}',   -- sensitive values, sealed (never in clear)
    sensitive         text[] NOT NULL DEFAULT '{}',
    agents            text[] NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'new'
                      CHECK (status IN ('new', 'deploying', 'deployed', 'failed', 'destroying', 'destroyed')),
    revision          bigint NOT NULL DEFAULT 1,     -- the ETag
    outputs           jsonb NOT NULL DEFAULT '{}',   -- the last successful deploy's
    -- What that deploy was asked with, for a later destroy: {"sealed": "<seal of the JSON object>"},
    -- or {"plain": {...}} only when the store runs without TRELLIS_SEAL_KEY; {} when none.
    deployed_variables jsonb NOT NULL DEFAULT '{}',
    deployed          boolean NOT NULL DEFAULT false,
    last_run_id       text NOT NULL DEFAULT '',      -- the run whose event last set status
    deploy_run_id     text NOT NULL DEFAULT '',      -- the run that set outputs and deployed_variables
    status_seq        bigint NOT NULL DEFAULT 0,     -- the event sequence that set status (projection order)
    webhook_sha256    text UNIQUE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE TABLE runs (
    tenant           text NOT NULL,
    run_id           text NOT NULL,
    environment      text NOT NULL,
    action           text NOT NULL,
    status           text NOT NULL,
    status_seq       bigint NOT NULL DEFAULT 0,
    requested_by     text NOT NULL DEFAULT '',
    requested_at     timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    message          text NOT NULL DEFAULT '',
    errors           jsonb NOT NULL DEFAULT '[]',
    outputs          jsonb NOT NULL DEFAULT '{}',
    workflow         jsonb,                        -- the compiled DAG, sensitive values masked, no scope
                                                   -- (workflow_ref: fetched and stored here)
    variables        jsonb NOT NULL DEFAULT '{}',  -- the request's variables, as environments.deployed_variables
    idempotency_key  text,
    request_digest   text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, run_id)
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_environment ON runs (tenant, environment, run_id DESC);

CREATE TABLE activities (
    tenant       text NOT NULL,
    run_id       text NOT NULL,
    activity_id  text NOT NULL,
    ordinal      integer NOT NULL DEFAULT 0,       -- its place in the workflow's topological order
    kind         text NOT NULL,
    resource     text NOT NULL DEFAULT '',
    stage        text NOT NULL DEFAULT '',
    depends_on   text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'pending',
    status_seq   bigint NOT NULL DEFAULT 0,        -- updates apply only from a later event
    attempts     integer NOT NULL DEFAULT 0,
    agent        text NOT NULL DEFAULT '',
    started_at   timestamptz,
    finished_at  timestamptz,
    outputs      jsonb NOT NULL DEFAULT '{}',
    reason       text NOT NULL DEFAULT '',
    exit_code    integer,
    PRIMARY KEY (tenant, run_id, activity_id)
);
CREATE INDEX activities_by_run ON activities (tenant, run_id, ordinal);

-- Every run event projected (heartbeats excepted), by its stream sequence and its id: the idempotency
-- key of the projection. Bodies leave out what is kept elsewhere or must not be kept: a request's
-- sources, files and variables, a compiled workflow's activities and scope.
CREATE TABLE events (
    seq          bigint PRIMARY KEY,               -- TRELLIS_EVENTS stream sequence
    event_id     text NOT NULL UNIQUE,
    tenant       text NOT NULL,
    run_id       text NOT NULL,
    kind         text NOT NULL,
    activity_id  text NOT NULL DEFAULT '',
    attempt      integer NOT NULL DEFAULT 0,
    occurred_at  timestamptz NOT NULL,
    body         jsonb NOT NULL
);
CREATE INDEX events_by_run ON events (tenant, run_id, seq);

CREATE TABLE log_chunks (
    position     bigint PRIMARY KEY,               -- TRELLIS_LOGS stream sequence
    tenant       text NOT NULL,
    run_id       text NOT NULL,
    activity_id  text NOT NULL,
    attempt      integer NOT NULL,
    sequence     integer NOT NULL,
    stream       text NOT NULL,
    data         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    UNIQUE (tenant, run_id, activity_id, attempt, sequence)
);
CREATE INDEX log_chunks_by_run ON log_chunks (tenant, run_id, position);
CREATE INDEX log_chunks_by_age ON log_chunks (occurred_at);

CREATE TABLE approvals (
    tenant        text NOT NULL,
    run_id        text NOT NULL,
    activity_id   text NOT NULL,
    attempt       integer NOT NULL,
    approvers     text[] NOT NULL DEFAULT '{}',
    requested_at  timestamptz,
    expires_at    timestamptz,
    decision      text NOT NULL DEFAULT '',
    decided_by    text NOT NULL DEFAULT '',
    comment       text NOT NULL DEFAULT '',
    decided_at    timestamptz,
    status_seq    bigint NOT NULL DEFAULT 0,         -- the event sequence that last changed the row
    PRIMARY KEY (tenant, run_id, activity_id)
);

-- Signed approval callback tokens already used: a replay is refused.
CREATE TABLE callback_tokens (
    token_id    text PRIMARY KEY,
    tenant      text NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE audit (
    id       bigserial PRIMARY KEY,
    tenant   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL DEFAULT '',
    detail   jsonb NOT NULL DEFAULT '{}',
    remote   text NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_tenant ON audit (tenant, id DESC);

-- How far each projection has written (the barrier a consistent read waits on).
CREATE TABLE projection_progress (
    stream  text PRIMARY KEY,
    seq     bigint NOT NULL
);
