-- Rebound schema: tenant data, every row keyed by the Whop company it belongs to.
-- Money is integer minor units + ISO currency; every timestamp is timestamptz.


-- Per-company settings; a company never seen gets the defaults (the API returns them).
CREATE TABLE creator_settings (
    company_id            text PRIMARY KEY CHECK (company_id <> ''),
    enable_push           boolean NOT NULL DEFAULT true,
    enable_dm             boolean NOT NULL DEFAULT true,
    incentive_days        integer NOT NULL DEFAULT 0 CHECK (incentive_days BETWEEN 0 AND 30),
    reminder_offsets_days integer[] NOT NULL DEFAULT '{2,4}'
        CHECK (cardinality(reminder_offsets_days) BETWEEN 1 AND 5
               AND 1 <= ALL (reminder_offsets_days) AND 13 >= ALL (reminder_offsets_days)),
    timezone              text NOT NULL DEFAULT 'UTC',
    quiet_hours_start     time,
    quiet_hours_end       time,
    push_experience_id    text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL))
);

-- One row per accepted Whop webhook. The payload is minimised (ids, amounts, codes, times):
-- no email, name, username, phone or card data is ever stored.
CREATE TABLE events (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id           text NOT NULL UNIQUE CHECK (webhook_id <> ''),
    company_id           text NOT NULL CHECK (company_id <> ''),
    type                 text NOT NULL,
    membership_id        text,
    user_id              text,
    payment_id           text,
    occurred_at          timestamptz NOT NULL,      -- event time at Whop (contract: "Event time")
    occurred_at_inferred boolean NOT NULL DEFAULT false,  -- payload had no usable time: receipt time
    received_at          timestamptz NOT NULL,
    processed_at         timestamptz NOT NULL DEFAULT now(),
    payload              jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_by_membership ON events (company_id, membership_id, occurred_at);

CREATE TABLE recovery_cases (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id             text NOT NULL CHECK (company_id <> ''),
    membership_id          text NOT NULL CHECK (membership_id <> ''),
    user_id                text,
    seq                    integer NOT NULL DEFAULT 1,   -- nth failure episode of the membership
    status                 text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'recovered', 'cancelled', 'expired')),
    first_failure_at       timestamptz NOT NULL,
    last_failure_at        timestamptz NOT NULL,
    failure_count          integer NOT NULL DEFAULT 1 CHECK (failure_count >= 1),
    payment_id             text,
    amount_minor           bigint CHECK (amount_minor >= 0),
    currency               text CHECK (currency ~ '^[a-z]{3}$'),
    decline_code           text,
    failure_reason         text,
    recovery_url           text,
    recovered_at           timestamptz,
    recovered_amount_minor bigint CHECK (recovered_amount_minor >= 0),
    recovered_currency     text CHECK (recovered_currency ~ '^[a-z]{3}$'),
    closed_at              timestamptz,
    close_reason           text,
    cancelled_by           text,            -- creator user id when a creator cancelled the case
    incentive_days         integer NOT NULL DEFAULT 0,
    incentive_cost_minor   bigint,
    next_action_at         timestamptz,     -- when the scheduler next owes this case something
    link_token             text UNIQUE,     -- tracked-link token: random, no PII
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, membership_id, seq),
    UNIQUE (id, company_id),
    CHECK (status <> 'recovered' OR recovered_at IS NOT NULL)
);
-- The scheduler's hot path: open cases by due time (cost follows due work, not open cases).
CREATE INDEX recovery_cases_due ON recovery_cases (next_action_at) WHERE status = 'open';
-- Dashboard lists, KPIs and export: a company's cases by first failure, newest first.
CREATE INDEX recovery_cases_by_company ON recovery_cases (company_id, first_failure_at DESC, id DESC);
CREATE INDEX recovery_cases_by_membership ON recovery_cases (company_id, membership_id);

-- The ledger (and outbox): every nudge, reminder, incentive and creator action of a case.
-- An effect is a row here before it is an HTTP call; the key makes it happen at most once.
CREATE TABLE recovery_actions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    case_id         uuid NOT NULL,
    company_id      text NOT NULL CHECK (company_id <> ''),
    kind            text NOT NULL,
    step            text NOT NULL,
    channel         text,
    status          text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'claimed', 'sent', 'failed', 'skipped', 'done')),
    idempotency_key text NOT NULL UNIQUE,
    actor           text NOT NULL DEFAULT 'system',
    attempts        integer NOT NULL DEFAULT 0,
    due_at          timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    error_class     text,
    error_detail    text,
    result          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    FOREIGN KEY (case_id, company_id) REFERENCES recovery_cases (id, company_id) ON DELETE CASCADE
);
CREATE INDEX recovery_actions_by_case ON recovery_actions (case_id, created_at);
CREATE INDEX recovery_actions_owed ON recovery_actions (due_at) WHERE status IN ('pending', 'claimed');

-- Fixed-window request counters, shared by every Lambda instance.
CREATE TABLE rate_limits (
    company_id   text NOT NULL CHECK (company_id <> ''),
    bucket       text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (company_id, bucket, window_start)
);
