-- The creator API (issue 5): search by id prefix, and the ledger look-ups of the case views.

-- `q` on the case list matches membership_id / user_id exactly or by prefix (LIKE 'abc%'):
-- text_pattern_ops lets a btree serve prefix matches whatever the database collation is.
CREATE INDEX recovery_cases_membership_prefix
    ON recovery_cases (company_id, membership_id text_pattern_ops);
CREATE INDEX recovery_cases_user_prefix
    ON recovery_cases (company_id, user_id text_pattern_ops);

-- Manual-nudge cooldown and the export's nudges_sent count read a case's rows by kind.
CREATE INDEX recovery_actions_by_case_kind ON recovery_actions (case_id, kind, created_at);
