-- Number 6 belongs to another part of issue 18 (merged separately). This file only keeps the
-- numbering of the i18-static branch without a gap; drop it when the real 0006 is merged.
SELECT 1;
