-- Trellis state store, schema 4: tenants' agent nkeys. nats-server's authorization (one account,
-- nkey users with per-user permissions: trellis_core.nats_auth) is generated from these rows; the
-- seed is handed out once and never stored, only the public key. A revoked key keeps its row
-- (revoked_at set) so the audit trail and `who was this key` stay answerable.
CREATE TABLE agent_keys (
    public_key  text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX agent_keys_live ON agent_keys (tenant) WHERE revoked_at IS NULL;
