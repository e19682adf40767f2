-- Trellis state store, schema 2: an environment's last good deploy is ordered on its own.
-- Status and the deploy's outputs used to share status_seq, so when two store replicas wrote a
-- later failed run before an earlier successful deploy (catching up a backlog in parallel), the
-- deploy's outputs were never written. deploy_seq is the event sequence that set outputs,
-- deployed, deployed_variables and deploy_run_id: only a later successful run changes them.
ALTER TABLE environments ADD COLUMN deploy_seq bigint NOT NULL DEFAULT 0;
