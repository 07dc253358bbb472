-- Reliability (issue 8): stable case identity, claim ownership, poison records, fair ticks.

-- A case is identified by its episode: the webhook id of the failure that opened it. The fold
-- matches stored rows to episodes by the failures each episode contains, so a late event that
-- re-numbers episodes updates rows in place instead of shifting them (seq is display order only).
ALTER TABLE recovery_cases ADD COLUMN episode_webhook_id text;
ALTER TABLE recovery_cases DROP CONSTRAINT recovery_cases_company_id_membership_id_seq_key;
CREATE UNIQUE INDEX recovery_cases_episode ON recovery_cases (company_id, episode_webhook_id)
    WHERE episode_webhook_id IS NOT NULL;

-- The lease token of the executor that holds a claim: an outcome is recorded only by the
-- holder, so an executor whose lease ran out cannot overwrite the next one's result.
ALTER TABLE recovery_actions ADD COLUMN claim_token uuid;

-- When an effect became owed (the injected clock, unlike created_at): its copy is rendered as of
-- then, so every retry sends the same body under the same Idempotency-Key.
ALTER TABLE recovery_actions ADD COLUMN owed_at timestamptz;

-- The frequency cap looks for a member's sends in flight as well as those already sent.
CREATE INDEX recovery_actions_in_flight ON recovery_actions (company_id, channel)
    WHERE status = 'claimed';

-- Webhooks that were verified and acknowledged but cannot be applied (a poison record):
-- the id, why, and when. No payload and no company data: nothing here is tenant data, so the
-- runtime role may only add rows (ON CONFLICT DO NOTHING needs INSERT alone) and never read them.
CREATE TABLE poison_events (
    webhook_id  text PRIMARY KEY CHECK (webhook_id <> ''),
    reason      text NOT NULL,
    error_class text NOT NULL,
    received_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
GRANT INSERT ON poison_events TO rebound_app;

-- Fair ticks: the companies whose due work is oldest come first, so a slow tick that runs out
-- of time leaves the most recently due companies for the next one, never the same ones.
CREATE OR REPLACE FUNCTION due_company_ids(p_now timestamptz, p_limit integer DEFAULT 1000)
RETURNS TABLE (company_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT d.company_id FROM (
        SELECT c.company_id, c.next_action_at AS due FROM recovery_cases c
         WHERE c.status = 'open' AND c.next_action_at <= p_now
        UNION ALL
        SELECT a.company_id, a.due_at AS due FROM recovery_actions a
         WHERE a.status IN ('pending', 'claimed') AND a.due_at <= p_now
           AND (a.claimed_until IS NULL OR a.claimed_until <= p_now)
    ) d
    GROUP BY d.company_id
    ORDER BY min(d.due), d.company_id
    LIMIT p_limit
$$;
