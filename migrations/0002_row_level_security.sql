-- Row-level security. The runtime role owns nothing and cannot bypass RLS; every tenant table
-- is scoped to the transaction-local setting app.company_id (empty string = no tenant).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rebound_app') THEN
        CREATE ROLE rebound_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- Owns the SECURITY DEFINER functions that must see across tenants; never logs in.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rebound_definer') THEN
        CREATE ROLE rebound_definer NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- A non-superuser migrator (RDS) must be a member of the role it hands functions to.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT rebound_definer TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO rebound_app, rebound_definer;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON creator_settings, events, recovery_cases, recovery_actions, rate_limits TO rebound_app;

ALTER TABLE creator_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE creator_settings FORCE ROW LEVEL SECURITY;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
ALTER TABLE recovery_cases ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_cases FORCE ROW LEVEL SECURITY;
ALTER TABLE recovery_actions ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_actions FORCE ROW LEVEL SECURITY;
ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limits FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON creator_settings TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
CREATE POLICY tenant_isolation ON events TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
CREATE POLICY tenant_isolation ON recovery_cases TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
CREATE POLICY tenant_isolation ON recovery_actions TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
CREATE POLICY tenant_isolation ON rate_limits TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));

-- The definer may read (never write) the rows its functions need to find ids across tenants.
GRANT SELECT ON recovery_cases, recovery_actions TO rebound_definer;
CREATE POLICY definer_reads_ids ON recovery_cases FOR SELECT TO rebound_definer USING (true);
CREATE POLICY definer_reads_ids ON recovery_actions FOR SELECT TO rebound_definer USING (true);
GRANT SELECT ON schema_migrations TO rebound_definer;

-- Cross-tenant entry points: ids only, never rows of tenant data.

-- Companies with open cases or owed ledger rows due at or before p_now (the scheduler's tick).
CREATE FUNCTION due_company_ids(p_now timestamptz, p_limit integer DEFAULT 1000)
RETURNS TABLE (company_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT DISTINCT d.company_id FROM (
        SELECT c.company_id FROM recovery_cases c
         WHERE c.status = 'open' AND c.next_action_at <= p_now
        UNION
        SELECT a.company_id FROM recovery_actions a
         WHERE a.status IN ('pending', 'claimed') AND a.due_at <= p_now
           AND (a.claimed_until IS NULL OR a.claimed_until <= p_now)
    ) d
    LIMIT p_limit
$$;

-- Which company and case a tracked link belongs to (the click carries no tenant context).
CREATE FUNCTION case_for_link_token(p_token text)
RETURNS TABLE (company_id text, case_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT c.company_id, c.id FROM recovery_cases c WHERE c.link_token = p_token
$$;

-- The latest applied migration, for health checks (not tenant data).
CREATE FUNCTION rebound_schema_version()
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT max(version) FROM schema_migrations
$$;

ALTER FUNCTION due_company_ids(timestamptz, integer) OWNER TO rebound_definer;
ALTER FUNCTION case_for_link_token(text) OWNER TO rebound_definer;
ALTER FUNCTION rebound_schema_version() OWNER TO rebound_definer;
REVOKE ALL ON FUNCTION due_company_ids(timestamptz, integer), case_for_link_token(text),
    rebound_schema_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION due_company_ids(timestamptz, integer), case_for_link_token(text),
    rebound_schema_version() TO rebound_app;
