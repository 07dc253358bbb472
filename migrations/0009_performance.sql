-- Performance (issue 13): indexes that make per-company work cost what it touches.

-- KPIs: the window aggregate reads only this index (an index-only scan once the table is
-- vacuumed), not the heap of every case of the company.
CREATE INDEX recovery_cases_kpi ON recovery_cases (company_id, first_failure_at)
    INCLUDE (status, currency, recovered_currency, recovered_amount_minor);

-- The tick's expire phase: open cases whose first failure is older than the window, found by a
-- range scan (with the sargable predicate first_failure_at < now - window), however many open
-- cases are not yet due.
CREATE INDEX recovery_cases_open_by_first_failure ON recovery_cases (company_id, first_failure_at)
    WHERE status = 'open';

-- Per-company due work: the tick runs one company at a time, so its due look-ups lead with the
-- company (the cross-company ones, due_company_ids, keep the indexes without it).
CREATE INDEX recovery_cases_due_by_company ON recovery_cases (company_id, next_action_at)
    WHERE status = 'open';
CREATE INDEX recovery_actions_owed_by_company ON recovery_actions (company_id, due_at)
    WHERE status IN ('pending', 'claimed');

-- The CSV export: Postgres formats each cell as the export's rules say, so the route only joins
-- lines. A time is ISO 8601 UTC with microseconds and a Z; text a spreadsheet would run as a
-- formula (starting = + - @, tab or CR) gets a leading single quote; a cell holding a comma,
-- quote, CR or LF is quoted with its quotes doubled (RFC 4180, as Python's csv module writes).
CREATE FUNCTION rebound_csv_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN v IS NULL THEN ''
        -- The common case first, without a regular expression: nothing to quote or neutralise.
        WHEN strpos(v, ',') = 0 AND strpos(v, '"') = 0 AND strpos(v, E'\n') = 0
             AND strpos(v, E'\r') = 0 AND left(v, 1) NOT IN ('=', '+', '-', '@', E'\t') THEN v
        WHEN v ~ '^[=+@\t\r-]' THEN
            CASE WHEN v ~ '[",\r\n]' THEN '"''' || replace(v, '"', '""') || '"' ELSE '''' || v END
        WHEN v ~ '[",\r\n]' THEN '"' || replace(v, '"', '""') || '"'
        ELSE v
    END
$$;

CREATE FUNCTION rebound_csv_time(v timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(to_char(v AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '')
$$;
