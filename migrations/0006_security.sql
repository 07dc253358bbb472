-- Request limits that exist before any tenant is known (issue 9).
--
-- The per-company limits live in rate_limits under RLS. These are keyed by something else: the
-- Whop user behind a token (before Whop says which companies they administer), a tracked-link
-- token (before the link is looked up), the scheduler route. The key is a SHA-256 hex digest
-- computed by the application, so the table holds no user id and no link token.
--
-- rebound_app gets no privilege on the table: it can only call count_request(), which bumps one
-- counter atomically and returns it.

CREATE TABLE request_limits (
    scope        text        NOT NULL CHECK (scope ~ '^[a-z_]{1,40}$'),
    key_hash     text        NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    window_start timestamptz NOT NULL,
    count        integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (scope, key_hash, window_start)
);

REVOKE ALL ON request_limits FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON request_limits TO rebound_definer;

-- Count one request of (scope, key) in the window starting at p_window_start; return the count
-- so far. About one call in a hundred also deletes windows that ended more than a day ago.
CREATE FUNCTION count_request(p_scope text, p_key_hash text, p_window_start timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO request_limits AS r (scope, key_hash, window_start, count)
    VALUES (p_scope, p_key_hash, p_window_start, 1)
    ON CONFLICT (scope, key_hash, window_start) DO UPDATE SET count = r.count + 1
    RETURNING r.count INTO n;
    IF random() < 0.01 THEN
        DELETE FROM request_limits WHERE window_start < p_window_start - interval '1 day';
    END IF;
    RETURN n;
END
$$;

ALTER FUNCTION count_request(text, text, timestamptz) OWNER TO rebound_definer;
REVOKE ALL ON FUNCTION count_request(text, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION count_request(text, text, timestamptz) TO rebound_app;
