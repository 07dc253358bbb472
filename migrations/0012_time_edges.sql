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
