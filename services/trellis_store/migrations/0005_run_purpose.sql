-- What a run is for beyond its action: '' (an ordinary deploy or destroy), 'action:<name>' (a
-- day-2 action), 'force-destroy', 'drift' (plan only). Only ordinary runs and force-destroys move
-- an environment's status, outputs and deploy record; the others are kept in its history.
ALTER TABLE runs ADD COLUMN purpose text NOT NULL DEFAULT '';
