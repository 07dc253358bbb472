-- Numbers a creator can bet on (issue 17): what measurement needs to know about each case.
--
-- opened_at: when Rebound opened the row (the database clock). A case is in an arm (treated,
--   holdout, a variant) only if it opened before its 14-day window ended: a case first heard of
--   after its window (a late first webhook) was never messaged, whatever arm its hash names.
-- holdout_percent_at_open: the holdout percent in force when the case was assigned; lift compares
--   arms only over cases assigned while it was above 0. NULL = not known (see the backfill).
-- contaminated: a holdout case a creator nudged by hand. It stays in the holdout (intention to
--   treat); the lift reports how many.
ALTER TABLE recovery_cases
    ADD COLUMN opened_at               timestamptz,
    ADD COLUMN holdout_percent_at_open integer CHECK (holdout_percent_at_open BETWEEN 0 AND 50),
    ADD COLUMN contaminated            boolean NOT NULL DEFAULT false;

-- Backfill. RLS is forced even for the owner that runs migrations: lift it for this statement's
-- transaction only (DDL is transactional, so a failure leaves it forced).
ALTER TABLE recovery_cases NO FORCE ROW LEVEL SECURITY;

-- opened_at: the row's created_at is exactly when Rebound opened it (the same database clock).
-- holdout_percent_at_open, from what can still be known:
--   * settings never saved: the holdout was never on (0);
--   * the case opened after the settings' last save: today's percent was in force (exact);
--   * before that, a case opened before the company's first held-out case: 0 (no holdout seen);
--   * after it, with a holdout still on today: assumed on since then, at today's percent;
--   * otherwise (the holdout was switched off since): NULL, not known, left out of the lift.
UPDATE recovery_cases c SET
    opened_at = c.created_at,
    holdout_percent_at_open = CASE
        WHEN s.company_id IS NULL THEN 0
        WHEN c.created_at >= s.updated_at THEN s.holdout_percent
        WHEN h.first_held IS NULL OR c.created_at < h.first_held THEN 0
        WHEN s.holdout_percent > 0 THEN s.holdout_percent
        ELSE NULL END,
    contaminated = c.holdout AND EXISTS (
        SELECT 1 FROM recovery_actions a WHERE a.case_id = c.id AND a.kind = 'manual_nudge')
FROM recovery_cases c2
LEFT JOIN creator_settings s ON s.company_id = c2.company_id
LEFT JOIN (SELECT company_id, min(created_at) AS first_held FROM recovery_cases WHERE holdout
           GROUP BY company_id) h ON h.company_id = c2.company_id
WHERE c2.id = c.id;

ALTER TABLE recovery_cases FORCE ROW LEVEL SECURITY;

-- New rows: the database clock when the row is inserted (the code never sets it). The holdout
-- percent is written by the assignment that runs in the same transaction as the insert.
ALTER TABLE recovery_cases ALTER COLUMN opened_at SET DEFAULT now();
ALTER TABLE recovery_cases ALTER COLUMN opened_at SET NOT NULL;
