-- Drift checks (docs/drift.md): one row per drift run, written when it is compiled and finished
-- when it ends, and what it found for each resource of the environment.
CREATE TABLE drift_checks (
    tenant       text NOT NULL,
    run_id       text NOT NULL,
    environment  text NOT NULL,
    -- Workflow.outputReaders: every resource of the environment -> output -> the resources reading it
    readers      jsonb NOT NULL DEFAULT '{}',
    checks       jsonb NOT NULL DEFAULT '{}',   -- resource -> the activity whose outputs report it
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'drifted', 'in-sync', 'unknown')),
    checked_at   timestamptz,                   -- when the run ended
    PRIMARY KEY (tenant, run_id)
);
CREATE INDEX drift_checks_by_environment ON drift_checks (tenant, environment, checked_at DESC);

CREATE TABLE drift_results (
    tenant             text NOT NULL,
    run_id             text NOT NULL,
    environment        text NOT NULL,
    resource           text NOT NULL,
    status             text NOT NULL CHECK (status IN ('drifted', 'in-sync', 'not-checked', 'error')),
    drifted            boolean,                 -- NULL: not checked, or the check did not finish
    summary            text NOT NULL DEFAULT '',
    changed_resources  jsonb NOT NULL DEFAULT '[]',
    changed_outputs    jsonb NOT NULL DEFAULT '[]',
    impacted           jsonb NOT NULL DEFAULT '[]',  -- downstream resources whose inputs change with them
    checked_at         timestamptz,
    PRIMARY KEY (tenant, run_id, resource)
);
