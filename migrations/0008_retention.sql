-- Retention (issue 12, docs/privacy.md). The tick purges, in small batches and across tenants:
--   * the member-specific URLs (payment-fix and billing links) kept in old events' payloads and
--     on old closed cases: they are capabilities for one member's billing page;
--   * click rows (recovery_actions of kind 'link_click': when a member opened their link); the
--     case keeps its aggregate link_clicks / last_clicked_at;
--   * rate-limit windows that ended long ago (a company that stops calling left them behind).
-- Through SECURITY DEFINER functions owned by rebound_definer that return counts, never rows.
-- (Deletes need no row lock first: two ticks deleting the same row is harmless, one waits.)

-- Events whose URLs are still present, by age: each batch is found without rescanning rows
-- already purged (the purge removes the keys, so a purged row leaves this partial index).
CREATE INDEX events_retention_pending ON events (received_at)
    WHERE payload ?| ARRAY['recovery_url', 'manage_url'];
CREATE INDEX recovery_cases_retention_pending ON recovery_cases (closed_at)
    WHERE status <> 'open' AND (recovery_url IS NOT NULL OR manage_url IS NOT NULL);
CREATE INDEX rate_limits_by_window ON rate_limits (window_start);
CREATE INDEX recovery_actions_clicks_by_age ON recovery_actions (created_at) WHERE kind = 'link_click';

GRANT SELECT, UPDATE (payload) ON events TO rebound_definer;
GRANT UPDATE (recovery_url, manage_url) ON recovery_cases TO rebound_definer;
GRANT SELECT, DELETE ON rate_limits TO rebound_definer;
GRANT DELETE ON recovery_actions TO rebound_definer;
CREATE POLICY definer_retention_delete ON recovery_actions FOR DELETE TO rebound_definer
    USING (kind = 'link_click');
CREATE POLICY definer_retention_read ON events FOR SELECT TO rebound_definer USING (true);
CREATE POLICY definer_retention_update ON events FOR UPDATE TO rebound_definer
    USING (true) WITH CHECK (true);
CREATE POLICY definer_retention_update ON recovery_cases FOR UPDATE TO rebound_definer
    USING (true) WITH CHECK (true);
CREATE POLICY definer_retention_read ON rate_limits FOR SELECT TO rebound_definer USING (true);
CREATE POLICY definer_retention_delete ON rate_limits FOR DELETE TO rebound_definer USING (true);

CREATE FUNCTION purge_event_urls(p_before timestamptz, p_limit integer DEFAULT 500)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH batch AS (
        SELECT id FROM events
         WHERE received_at < p_before AND payload ?| ARRAY['recovery_url', 'manage_url']
         ORDER BY received_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), done AS (
        UPDATE events e SET payload = e.payload - ARRAY['recovery_url', 'manage_url']
          FROM batch WHERE e.id = batch.id RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

CREATE FUNCTION purge_case_urls(p_before timestamptz, p_limit integer DEFAULT 500)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH batch AS (
        SELECT id FROM recovery_cases
         WHERE status <> 'open' AND closed_at < p_before
           AND (recovery_url IS NOT NULL OR manage_url IS NOT NULL)
         ORDER BY closed_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), done AS (
        UPDATE recovery_cases c SET recovery_url = NULL, manage_url = NULL
          FROM batch WHERE c.id = batch.id RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

CREATE FUNCTION purge_click_rows(p_before timestamptz, p_limit integer DEFAULT 500)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH batch AS (
        SELECT id FROM recovery_actions
         WHERE kind = 'link_click' AND created_at < p_before
         ORDER BY created_at LIMIT p_limit
    ), done AS (
        DELETE FROM recovery_actions a USING batch WHERE a.id = batch.id RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

CREATE FUNCTION purge_rate_limits(p_before timestamptz, p_limit integer DEFAULT 500)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH batch AS (
        SELECT company_id, bucket, window_start FROM rate_limits
         WHERE window_start < p_before
         ORDER BY window_start LIMIT p_limit
    ), done AS (
        DELETE FROM rate_limits r USING batch
         WHERE r.company_id = batch.company_id AND r.bucket = batch.bucket
           AND r.window_start = batch.window_start
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

ALTER FUNCTION purge_event_urls(timestamptz, integer) OWNER TO rebound_definer;
ALTER FUNCTION purge_case_urls(timestamptz, integer) OWNER TO rebound_definer;
ALTER FUNCTION purge_click_rows(timestamptz, integer) OWNER TO rebound_definer;
ALTER FUNCTION purge_rate_limits(timestamptz, integer) OWNER TO rebound_definer;
REVOKE ALL ON FUNCTION purge_event_urls(timestamptz, integer), purge_case_urls(timestamptz, integer),
    purge_click_rows(timestamptz, integer), purge_rate_limits(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_event_urls(timestamptz, integer), purge_case_urls(timestamptz, integer),
    purge_click_rows(timestamptz, integer), purge_rate_limits(timestamptz, integer) TO rebound_app;
