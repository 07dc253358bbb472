-- Nudges, reminders and incentives (issue 4): where the member is sent, and what they did.

ALTER TABLE recovery_cases
    ADD COLUMN manage_url      text,
    ADD COLUMN link_clicks     integer NOT NULL DEFAULT 0,
    ADD COLUMN last_clicked_at timestamptz,
    ADD COLUMN last_reminder_offset integer;  -- the latest reminder offset (days) already owed

-- Frequency cap and incentive limit look up a member's other cases.
CREATE INDEX recovery_cases_by_user ON recovery_cases (company_id, user_id);
CREATE INDEX recovery_actions_sent_by_channel ON recovery_actions (company_id, channel, completed_at)
    WHERE status = 'sent';
