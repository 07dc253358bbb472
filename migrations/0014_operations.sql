-- Production at scale (issue 19): a transaction start that does not pin an RDS Proxy session,
-- destructive cross-tenant purges taken away from the runtime, salted rate-limit keys, erased
-- companies that stay erased, and a read-only, audited path for operators under forced RLS.
-- Expand only: nothing the previous release reads is dropped or renamed. One grant is taken back
-- on purpose (the purge_* functions, below): the previous release's retention fails soft
-- (logged, RetentionFailed) until the new code runs; tests/compat/allowed.toml says so.

DO $$
BEGIN
    -- Runs the retention purges; nothing logs in as it and the runtime is not a member.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rebound_retention') THEN
        CREATE ROLE rebound_retention NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- What an operator's login is granted: EXECUTE on the ops_* functions, nothing else.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rebound_ops') THEN
        CREATE ROLE rebound_ops NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- Owns the ops_* functions: may read the tables they report on and append to ops_audit.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rebound_ops_reader') THEN
        CREATE ROLE rebound_ops_reader NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- A non-superuser migrator (RDS) must be a member of the roles it hands functions to.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT rebound_retention, rebound_ops_reader TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO rebound_retention, rebound_ops, rebound_ops_reader;

-- --- 1. A transaction start RDS Proxy can multiplex -------------------------------------------
-- RDS Proxy pins a client session to one database connection when it sees a statement set a
-- parameter (SET, set_config) or take a session advisory lock; it does not look inside function
-- calls. Everything this sets is transaction-local (is_local = true, an xact lock), so nothing
-- outlives the transaction and the session stays safe to hand to the next client. The caller's
-- own role applies (SECURITY INVOKER): this grants nothing set_config could not.
CREATE FUNCTION rebound_begin(p_company_id text, p_locks text[], p_statement_timeout_ms integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    IF p_statement_timeout_ms IS NOT NULL THEN
        PERFORM set_config('statement_timeout', p_statement_timeout_ms::text, true);
    END IF;
    IF p_company_id IS NOT NULL THEN
        PERFORM set_config('app.company_id', p_company_id, true);
    END IF;
    -- In the order given: every caller takes a membership's lock before its member's.
    FOREACH k IN ARRAY COALESCE(p_locks, '{}') LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(k, 0));
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION rebound_begin(text, text[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rebound_begin(text, text[], integer) TO rebound_app;

-- The CSV export hands COPY its filters as transaction-local settings (COPY binds no
-- parameters): the same, through a function, and only for Rebound's own "rebound." settings.
CREATE FUNCTION rebound_set_local(p_names text[], p_values text[])
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cardinality(p_names) <> cardinality(p_values)
       OR EXISTS (SELECT 1 FROM unnest(p_names) AS n WHERE n !~ '^rebound\.[a-z_]+$') THEN
        RAISE EXCEPTION 'rebound_set_local: names must be rebound.<name>, one value each'
            USING ERRCODE = '22023';
    END IF;
    PERFORM set_config(n, v, true) FROM unnest(p_names, p_values) AS s(n, v);
END
$$;
REVOKE ALL ON FUNCTION rebound_set_local(text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rebound_set_local(text[], text[]) TO rebound_app;

-- --- 2. Retention runs as its own role, through one narrow function --------------------------
-- The purge_* functions (0008) take any cut-off and batch size: called with a future date they
-- would strip every member URL and every rate-limit window across tenants at once. The runtime
-- may no longer call them; run_retention computes the cut-offs from the DATABASE clock, never
-- purges anything younger than 15 days (the 14-day recovery window, plus one) and does at most
-- one batch of 500 of each kind per call.
REVOKE EXECUTE ON FUNCTION purge_event_urls(timestamptz, integer), purge_case_urls(timestamptz, integer),
    purge_click_rows(timestamptz, integer), purge_rate_limits(timestamptz, integer) FROM rebound_app;
GRANT EXECUTE ON FUNCTION purge_event_urls(timestamptz, integer), purge_case_urls(timestamptz, integer),
    purge_click_rows(timestamptz, integer), purge_rate_limits(timestamptz, integer) TO rebound_retention;

CREATE FUNCTION run_retention(p_days integer, p_batch integer DEFAULT 500)
RETURNS TABLE (event_urls integer, case_urls integer, click_rows integer, rate_limits integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    keep_days integer := greatest(coalesce(p_days, 180), 15);
    batch integer := least(greatest(coalesce(p_batch, 500), 1), 500);
    cutoff timestamptz := now() - make_interval(days => keep_days);
BEGIN
    event_urls := purge_event_urls(cutoff, batch);
    case_urls := purge_case_urls(cutoff, batch);
    click_rows := purge_click_rows(cutoff, batch);
    rate_limits := purge_rate_limits(now() - interval '1 day', batch);
    RETURN NEXT;
END
$$;
ALTER FUNCTION run_retention(integer, integer) OWNER TO rebound_retention;
REVOKE ALL ON FUNCTION run_retention(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION run_retention(integer, integer) TO rebound_app;

-- --- 3. Rate-limit keys are salted; old windows go by the database clock -----------------------
-- request_limits held sha256(scope:key) of Whop user ids and link tokens: the same value in
-- every deployment, and a user id is found again by hashing the few candidates. Now the stored
-- key is sha256(salt || that digest) with a random per-database salt only the definer can read.
-- The application's call does not change (the previous release keeps working). The unsalted
-- windows (a minute long) are dropped: those counters start again.
CREATE TABLE request_limit_salt (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    salt       bytea NOT NULL CHECK (length(salt) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON request_limit_salt FROM PUBLIC;
GRANT SELECT ON request_limit_salt TO rebound_definer;
-- Two random UUIDs: 244 random bits (gen_random_uuid is core since PostgreSQL 13; no extension).
INSERT INTO request_limit_salt (salt)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
DELETE FROM request_limits;

CREATE OR REPLACE FUNCTION count_request(p_scope text, p_key_hash text, p_window_start timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
    salted text;
BEGIN
    IF p_key_hash IS NULL OR p_key_hash !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'count_request: key must be a hex SHA-256 digest' USING ERRCODE = '22023';
    END IF;
    SELECT encode(sha256(s.salt || convert_to(p_key_hash, 'UTF8')), 'hex') INTO STRICT salted
      FROM request_limit_salt s;
    INSERT INTO request_limits AS r (scope, key_hash, window_start, count)
    VALUES (p_scope, salted, p_window_start, 1)
    ON CONFLICT (scope, key_hash, window_start) DO UPDATE SET count = r.count + 1
    RETURNING r.count INTO n;
    IF random() < 0.01 THEN
        -- By the database clock: a caller's window start can no longer empty the table.
        DELETE FROM request_limits WHERE window_start < now() - interval '1 day';
    END IF;
    RETURN n;
END
$$;

-- --- 4. An erased company stays erased --------------------------------------------------------
-- scripts/purge_company.py records the company here in the same transaction that deletes its
-- rows; from then on its webhooks are not stored (the consumer acknowledges them as ignored),
-- so Whop's next delivery cannot bring the company back. The id is kept to honour the erasure.
-- purge_company.py --readmit removes the record (a creator who comes back).
CREATE TABLE erased_companies (
    company_id text PRIMARY KEY CHECK (company_id <> ''),
    erased_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE erased_companies ENABLE ROW LEVEL SECURITY;
ALTER TABLE erased_companies FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, DELETE ON erased_companies TO rebound_app;
CREATE POLICY tenant_isolation ON erased_companies TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
GRANT SELECT ON erased_companies TO rebound_definer;
CREATE POLICY definer_reads_erasures ON erased_companies FOR SELECT TO rebound_definer USING (true);

-- A webhook of an erased company is not stored: the row is dropped (the insert's RETURNING is
-- empty, as for a redelivery). The shared lock orders this against a purge in progress, which
-- holds the same key exclusively: an event is either stored before the purge (and purged) or
-- refused after it.
CREATE FUNCTION refuse_erased_company_events()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('erase:' || NEW.company_id, 0));
    IF EXISTS (SELECT 1 FROM erased_companies e WHERE e.company_id = NEW.company_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
ALTER FUNCTION refuse_erased_company_events() OWNER TO rebound_definer;
REVOKE ALL ON FUNCTION refuse_erased_company_events() FROM PUBLIC;
CREATE TRIGGER events_refuse_erased_companies BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_erased_company_events();

-- --- 5. Operators: read-only, audited functions under forced RLS -----------------------------
-- The runbook's queries used to run "as the owner", which forced RLS shows no tenant rows. An
-- operator's login is granted rebound_ops (GRANT rebound_ops TO <login>): it can execute these
-- functions and read the audit trail, nothing else. The functions run as rebound_ops_reader,
-- which may SELECT what they report on (a policy per table, FOR SELECT only) and append to
-- ops_audit; every call is recorded with the login, the function and its arguments.
CREATE TABLE ops_audit (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    login     text NOT NULL DEFAULT session_user,
    function  text NOT NULL,
    arguments jsonb NOT NULL DEFAULT '{}'::jsonb,
    row_count integer
);
REVOKE ALL ON ops_audit FROM PUBLIC;
GRANT INSERT ON ops_audit TO rebound_ops_reader;
GRANT SELECT ON ops_audit TO rebound_ops;

GRANT SELECT ON recovery_cases, recovery_actions, poison_events TO rebound_ops_reader;
CREATE POLICY ops_reads ON recovery_cases FOR SELECT TO rebound_ops_reader USING (true);
CREATE POLICY ops_reads ON recovery_actions FOR SELECT TO rebound_ops_reader USING (true);

-- Sends Whop refused for good (EffectsFailed), by company, channel and Whop's answer.
CREATE FUNCTION ops_failed_sends(p_hours integer DEFAULT 1)
RETURNS TABLE (company_id text, kind text, channel text, error_detail text, sends bigint,
               last_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    RETURN QUERY
        SELECT a.company_id, a.kind, a.channel, a.error_detail, count(*), max(a.updated_at)
          FROM recovery_actions a
         WHERE a.status = 'failed'
           AND a.updated_at > now() - make_interval(hours => least(greatest(p_hours, 1), 24 * 14))
         GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC, 1 LIMIT 200;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ops_audit (function, arguments, row_count)
    VALUES ('ops_failed_sends', jsonb_build_object('hours', p_hours), n);
END
$$;

-- Sends waiting on Whop (401/403 our key, 429, 5xx, timeouts): why, how many, since when.
CREATE FUNCTION ops_retrying_sends()
RETURNS TABLE (error_class text, error_detail text, sends bigint, companies bigint,
               oldest_due timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    RETURN QUERY
        SELECT a.error_class, a.error_detail, count(*), count(DISTINCT a.company_id), min(a.due_at)
          FROM recovery_actions a
         WHERE a.status IN ('pending', 'claimed')
           AND a.error_class IN ('credentials', 'rate_limited', 'unavailable')
         GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 200;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ops_audit (function, arguments, row_count) VALUES ('ops_retrying_sends', '{}', n);
END
$$;

-- Work the tick has not done yet, oldest first: due cases and owed ledger rows per company.
CREATE FUNCTION ops_backlog(p_limit integer DEFAULT 20)
RETURNS TABLE (company_id text, due_cases bigint, owed_rows bigint, oldest_due timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    RETURN QUERY
        SELECT d.company_id, count(*) FILTER (WHERE d.what = 'case'),
               count(*) FILTER (WHERE d.what = 'row'), min(d.due)
          FROM (SELECT c.company_id, 'case'::text AS what, c.next_action_at AS due
                  FROM recovery_cases c WHERE c.status = 'open' AND c.next_action_at <= now()
                UNION ALL
                SELECT a.company_id, 'row', a.due_at FROM recovery_actions a
                 WHERE a.status IN ('pending', 'claimed') AND a.due_at <= now()
                   AND (a.claimed_until IS NULL OR a.claimed_until <= now())) d
         GROUP BY 1 ORDER BY 4, 1 LIMIT least(greatest(p_limit, 1), 1000);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ops_audit (function, arguments, row_count)
    VALUES ('ops_backlog', jsonb_build_object('limit', p_limit), n);
END
$$;

-- Webhooks kept as poison records (acknowledged, never applied): why, how many, when last.
CREATE FUNCTION ops_poison_events(p_hours integer DEFAULT 24)
RETURNS TABLE (reason text, error_class text, events bigint, last_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    RETURN QUERY
        SELECT p.reason, p.error_class, count(*), max(p.created_at)
          FROM poison_events p
         WHERE p.created_at > now() - make_interval(hours => least(greatest(p_hours, 1), 24 * 14))
         GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 200;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ops_audit (function, arguments, row_count)
    VALUES ('ops_poison_events', jsonb_build_object('hours', p_hours), n);
END
$$;

-- Connections to this database by login, against max_connections (a connection storm, the
-- budget in README "Connections"). Counts only: no query text, no client address.
CREATE FUNCTION ops_connections()
RETURNS TABLE (login text, connections bigint, max_connections integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    RETURN QUERY
        SELECT s.usename::text, count(*), current_setting('max_connections')::integer
          FROM pg_stat_activity s
         WHERE s.datname = current_database() AND s.usename IS NOT NULL
         GROUP BY 1 ORDER BY 2 DESC, 1;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO ops_audit (function, arguments, row_count) VALUES ('ops_connections', '{}', n);
END
$$;

ALTER FUNCTION ops_failed_sends(integer) OWNER TO rebound_ops_reader;
ALTER FUNCTION ops_retrying_sends() OWNER TO rebound_ops_reader;
ALTER FUNCTION ops_backlog(integer) OWNER TO rebound_ops_reader;
ALTER FUNCTION ops_poison_events(integer) OWNER TO rebound_ops_reader;
ALTER FUNCTION ops_connections() OWNER TO rebound_ops_reader;
REVOKE ALL ON FUNCTION ops_failed_sends(integer), ops_retrying_sends(), ops_backlog(integer),
    ops_poison_events(integer), ops_connections() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ops_failed_sends(integer), ops_retrying_sends(), ops_backlog(integer),
    ops_poison_events(integer), ops_connections() TO rebound_ops;
