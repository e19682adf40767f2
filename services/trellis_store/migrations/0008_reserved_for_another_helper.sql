-- Placeholder on branch i18-drift only: number 8 belongs to another issue-18 helper's migration.
-- The integrator drops this file (its own commit) when merging; migrations may not skip a number.
SELECT 1;
