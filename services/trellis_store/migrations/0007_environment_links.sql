-- Static resources of kind environment (docs/static-resources.md): which environment reads
-- another's outputs. Written by the projection when a deploy that reads one succeeds (its run_id),
-- replaced by the next successful deploy, removed when the reading environment is destroyed. While
-- a row names an environment in depends_on_environment, a destroy of that environment is refused.
CREATE TABLE environment_links (
    tenant                 text NOT NULL,
    environment            text NOT NULL,   -- the environment that reads
    depends_on_environment text NOT NULL,   -- the environment it reads
    resource               text NOT NULL,   -- the static resource (kind environment) in its template
    run_id                 text NOT NULL,   -- the deploy that recorded the link
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, environment, resource),
    FOREIGN KEY (tenant, environment) REFERENCES environments (tenant, name)
);
CREATE INDEX environment_links_dependents ON environment_links (tenant, depends_on_environment);
