-- Honest measurement (issue 10): copy experiments, the holdout, decline classes.

-- A copy experiment: 2-4 variants (name, weight, optional copy), kept after it stops.
CREATE TABLE experiments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  text NOT NULL CHECK (company_id <> ''),
    name        text NOT NULL CHECK (name <> ''),
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'stopped')),
    variants    jsonb NOT NULL CHECK (jsonb_typeof(variants) = 'array'
                                      AND jsonb_array_length(variants) BETWEEN 2 AND 4),
    created_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, company_id),
    CHECK ((status = 'stopped') = (stopped_at IS NOT NULL))
);
-- At most one running experiment per company, even under two concurrent creates.
CREATE UNIQUE INDEX experiments_one_running ON experiments (company_id) WHERE status = 'running';
CREATE INDEX experiments_by_company ON experiments (company_id, created_at DESC, id DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON experiments TO rebound_app;
ALTER TABLE experiments ENABLE ROW LEVEL SECURITY;
ALTER TABLE experiments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON experiments TO rebound_app
    USING (company_id = NULLIF(current_setting('app.company_id', true), ''))
    WITH CHECK (company_id = NULLIF(current_setting('app.company_id', true), ''));

-- Assigned once when a case opens, never changed after (redelivery, reminders and manual nudges
-- all see the same arm and variant).
ALTER TABLE recovery_cases
    ADD COLUMN holdout       boolean NOT NULL DEFAULT false,
    ADD COLUMN experiment_id uuid,
    ADD COLUMN variant       text,
    ADD COLUMN decline_class text NOT NULL DEFAULT 'unknown'
        CHECK (decline_class IN ('card_hard', 'card_soft', 'authentication', 'unknown')),
    ADD FOREIGN KEY (experiment_id, company_id) REFERENCES experiments (id, company_id),
    ADD CHECK ((experiment_id IS NULL) = (variant IS NULL));
CREATE INDEX recovery_cases_by_experiment ON recovery_cases (company_id, experiment_id, variant)
    WHERE experiment_id IS NOT NULL;

-- Share of new cases held out of every automatic send (0 = off: a creator opts in).
ALTER TABLE creator_settings
    ADD COLUMN holdout_percent integer NOT NULL DEFAULT 0 CHECK (holdout_percent BETWEEN 0 AND 50);
