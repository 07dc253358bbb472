-- Issue 20: the last holes at the edges of time and input.

-- CSV cells (the reference formatter the COPY export is held to; store._copy_expression applies
-- the same rules): a separator followed by a formula character anywhere in a cell gets a single
-- quote between them. In a spreadsheet that splits lines on ";", "|" or tab, "…,;=cmd" would
-- start a cell with "=": a quote in front of the whole cell cannot help (it stays behind in the
-- cell before the split). Quotes between the separator and the formula character are looked
-- through ('…;"=cmd' is as dangerous). A cell that itself starts with a formula character keeps
-- its leading quote as before.
CREATE OR REPLACE FUNCTION rebound_csv_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN n IS NULL THEN ''
        WHEN strpos(n, ',') = 0 AND strpos(n, '"') = 0 AND strpos(n, E'\n') = 0
             AND strpos(n, E'\r') = 0 AND left(n, 1) NOT IN ('=', '+', '-', '@', E'\t') THEN n
        WHEN n ~ '^[=+@\t\r-]' THEN
            CASE WHEN n ~ '[",\r\n]' THEN '"''' || replace(n, '"', '""') || '"' ELSE '''' || n END
        WHEN n ~ '[",\r\n]' THEN '"' || replace(n, '"', '""') || '"'
        ELSE n
    END
    FROM (SELECT CASE WHEN v ~ '[,;|\t]"*[-=+@\t\r]'
                      THEN regexp_replace(v, '([,;|\t])(?="*[-=+@\t\r])', '\1''', 'g') ELSE v END AS n) s
$$;

-- Links of a merged-away case (issue 20 item 2). A late event that joins two stored episodes
-- leaves one case row; the link token of the row that goes lives on here, pointing at the row
-- that stays, so the links in messages already sent keep working (same click recording and
-- redirect rules). A later merge of the row that stays moves its aliases along; deleting a case
-- (a company or member erased) takes its aliases with it.
CREATE TABLE case_link_aliases (
    link_token text        PRIMARY KEY,
    company_id text        NOT NULL,
    case_id    uuid        NOT NULL REFERENCES recovery_cases (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_link_aliases_by_case ON case_link_aliases (case_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON case_link_aliases TO rebound_app;
ALTER TABLE case_link_aliases ENABLE ROW LEVEL SECURITY;
ALTER TABLE case_link_aliases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON case_link_aliases TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));
GRANT SELECT ON case_link_aliases TO rebound_definer;
CREATE POLICY definer_reads_ids ON case_link_aliases FOR SELECT TO rebound_definer USING (true);

-- Same signature, owner and grants: a retired token resolves to the case that took it over.
CREATE OR REPLACE FUNCTION case_for_link_token(p_token text)
RETURNS TABLE (company_id text, case_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT c.company_id, c.id FROM recovery_cases c WHERE c.link_token = p_token
    UNION ALL
    SELECT a.company_id, a.case_id FROM case_link_aliases a WHERE a.link_token = p_token
    LIMIT 1
$$;

-- Leases on the database's clock (issue 20 item 3): a row is claimable again when its lease has
-- ended by the database's time, not by the caller's p_now (a tick whose clock ran a day ahead
-- took live leases from healthy executors). Same signature, owner and grants.
CREATE OR REPLACE FUNCTION due_company_ids(p_now timestamptz, p_limit integer DEFAULT 1000)
RETURNS TABLE (company_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT d.company_id FROM (
        SELECT c.company_id, c.next_action_at AS due FROM recovery_cases c
         WHERE c.status = 'open' AND c.next_action_at <= p_now
        UNION ALL
        SELECT a.company_id, a.due_at AS due FROM recovery_actions a
         WHERE a.status IN ('pending', 'claimed') AND a.due_at <= p_now
           AND (a.claimed_until IS NULL OR a.claimed_until <= now())
    ) d
    GROUP BY d.company_id
    ORDER BY min(d.due), d.company_id
    LIMIT p_limit
$$;
