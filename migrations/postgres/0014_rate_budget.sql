-- Issue 14: one rate budget per rate-limit key across all replicas.
-- The version number follows the issue so that parallel branches adding
-- migrations do not collide.

-- What every replica knows about a key: its whole learned rate. Updated
-- by compare-and-set on `version` (decreases always apply).
CREATE TABLE rate_budgets (
    key            text PRIMARY KEY,
    version        bigint NOT NULL,
    rate_rps       double precision NOT NULL,
    good_rps       double precision NOT NULL,
    last_429_rps   double precision,
    learned_from   text NOT NULL,
    token_rate_tps double precision,
    paused_until   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Each replica's demand per key, with the database time of its last sync;
-- a member counts while that is younger than the lease.
CREATE TABLE rate_budget_members (
    key     text NOT NULL,
    replica text NOT NULL,
    demand  bigint NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (key, replica)
);
