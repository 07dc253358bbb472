-- Smart retry (issue 18): Rebound acts on the charge itself. A card the member saves
-- (setup_intent.succeeded) is attached to the membership, which makes Whop retry the open
-- past-due payment on it; a soft decline with no new card gets one retry at the next payday.
-- Both are ledger rows (kinds card_attach and payment_retry) like every other effect.
-- Everything here is additive: new columns are nullable or have defaults.

-- The creator's switch for the automatic attach and payday retry (a manual retry still works).
ALTER TABLE creator_settings ADD COLUMN smart_retry boolean NOT NULL DEFAULT true;

-- What Rebound did to the charge, and who gets the credit for a recovery:
--   retried_at   when Rebound first asked Whop to charge again, null if never;
--   retry_reason why: the member saved a card, the payday retry, or a creator's manual retry;
--   recovered_by once recovered: rebound_retry (the success followed Rebound's attach or retry),
--                after_click (the member followed a Rebound link first), other (Whop's own retry
--                or the member alone). Null on cases recovered before this migration: read as other.
ALTER TABLE recovery_cases
    ADD COLUMN retried_at   timestamptz,
    ADD COLUMN retry_reason text CHECK (retry_reason IN ('card_updated', 'payday', 'manual')),
    ADD COLUMN recovered_by text CHECK (recovered_by IN ('rebound_retry', 'after_click', 'other')),
    ADD CHECK ((retried_at IS NULL) = (retry_reason IS NULL));

-- A member's saved cards in a company (setup_intent.succeeded events carry no membership): read
-- when a case opens and the card was saved before the failure arrived.
CREATE INDEX events_card_saved_by_user ON events (company_id, user_id, occurred_at)
    WHERE type = 'setup_intent.succeeded';

-- The latest attach / retry outcome per company (the missing-permission warning) and a case's
-- recovery rows (the payday gate, the credit rule).
CREATE INDEX recovery_actions_smart_retry ON recovery_actions (company_id, kind, completed_at)
    WHERE kind IN ('card_attach', 'payment_retry');

-- The health check's view of missing Whop permissions across tenants: per permission, how many
-- companies' latest attach or retry Whop refused with 403. Counts only, never a company id.
CREATE FUNCTION smart_retry_permission_gaps()
RETURNS TABLE (permission text, companies integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT l.result ->> 'permission', count(*)::integer FROM (
        SELECT DISTINCT ON (a.company_id, a.kind) a.error_detail, a.result
          FROM recovery_actions a
         WHERE a.kind IN ('card_attach', 'payment_retry') AND a.status IN ('sent', 'failed')
         ORDER BY a.company_id, a.kind, a.completed_at DESC, a.updated_at DESC
    ) l
    WHERE l.error_detail = 'permission_missing' AND l.result ->> 'permission' IS NOT NULL
    GROUP BY 1
$$;

ALTER FUNCTION smart_retry_permission_gaps() OWNER TO rebound_definer;
REVOKE ALL ON FUNCTION smart_retry_permission_gaps() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smart_retry_permission_gaps() TO rebound_app;
