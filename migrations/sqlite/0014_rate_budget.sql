-- Issue 14: one rate budget per rate-limit key across all replicas (on
-- SQLite one process is the only member). The version number follows the
-- issue so that parallel branches adding migrations do not collide.

CREATE TABLE rate_budgets (
    key            TEXT PRIMARY KEY NOT NULL,
    version        INTEGER NOT NULL,
    rate_rps       REAL NOT NULL,
    good_rps       REAL NOT NULL,
    last_429_rps   REAL,
    learned_from   TEXT NOT NULL,
    token_rate_tps REAL,
    paused_until   TEXT,
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE rate_budget_members (
    key     TEXT NOT NULL,
    replica TEXT NOT NULL,
    demand  INTEGER NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (key, replica)
);
