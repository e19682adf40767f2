-- Reserved: another issue-18 branch owns migration 0007. This placeholder only keeps the numbers
-- gapless on the i18-tfstate branch; drop it when merging that branch's own 0007 file.
SELECT 1;
