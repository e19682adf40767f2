-- Trellis state store, schema 3: sensitive values at rest are sealed tokens
-- ([[trellis-sealed:v1:<kid>:<payload>]], trellis_core.sealed), not the store's own
-- `v1:<nonce>:<ciphertext>` under TRELLIS_SEAL_KEY. A run's requested variables and an
-- environment's deployed variables become a plain JSON object whose sensitive values are tokens
-- (was {"sealed": "<seal of the whole object>"} or {"plain": {...}}).
--
-- Opening an old sealed value needs the seal key, which SQL does not have: this file moves each
-- old sealed blob aside (variables_v1, deployed_variables_v1) and the store converts them at
-- start-up after the migrations (trellis_store.legacy_sealing: opens with the key, seals every
-- value as a token, clears the column), together with the `v1:` values of environments.sealed
-- and the {"sealed": "v1:..."} sensitive outputs of runs and environments.

ALTER TABLE runs ADD COLUMN variables_v1 text;
ALTER TABLE environments ADD COLUMN deployed_variables_v1 text;

-- Every row written before this migration holds one of the old forms: {}, {"sealed": "..."},
-- {"plain": {...}}, or (older still) a bare sealed string.
UPDATE runs SET variables_v1 = variables->>'sealed', variables = '{}'
WHERE jsonb_typeof(variables) = 'object' AND jsonb_typeof(variables->'sealed') = 'string'
  AND (SELECT count(*) FROM jsonb_object_keys(variables)) = 1;
UPDATE runs SET variables_v1 = variables #>> '{}', variables = '{}' WHERE jsonb_typeof(variables) = 'string';
UPDATE runs SET variables = variables->'plain'
WHERE jsonb_typeof(variables) = 'object' AND jsonb_typeof(variables->'plain') = 'object'
  AND (SELECT count(*) FROM jsonb_object_keys(variables)) = 1;

UPDATE environments SET deployed_variables_v1 = deployed_variables->>'sealed', deployed_variables = '{}'
WHERE jsonb_typeof(deployed_variables) = 'object' AND jsonb_typeof(deployed_variables->'sealed') = 'string'
  AND (SELECT count(*) FROM jsonb_object_keys(deployed_variables)) = 1;
UPDATE environments SET deployed_variables_v1 = deployed_variables #>> '{}', deployed_variables = '{}'
WHERE jsonb_typeof(deployed_variables) = 'string';
UPDATE environments SET deployed_variables = deployed_variables->'plain'
WHERE jsonb_typeof(deployed_variables) = 'object' AND jsonb_typeof(deployed_variables->'plain') = 'object'
  AND (SELECT count(*) FROM jsonb_object_keys(deployed_variables)) = 1;
