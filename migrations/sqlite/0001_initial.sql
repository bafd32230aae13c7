-- runnel schema, SQLite flavour (DESIGN §7). Kept in step with
-- ../postgres/0001_initial.sql: same tables, columns and indexes.
--
-- Conventions: UUIDs are 16-byte BLOBs; timestamps are UTC text written by
-- the database itself as strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), so they sort
-- and compare as text; JSON is kept as text (the store never looks inside it).

CREATE TABLE datasets (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Example ids grow with insertion order (no example is ever deleted while its
-- dataset lives), which is what keyset pagination over (example, repetition)
-- relies on.
CREATE TABLE dataset_examples (
    id         INTEGER PRIMARY KEY,
    dataset_id BLOB NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    input      TEXT NOT NULL,
    expected   TEXT,
    metadata   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX dataset_examples_by_dataset ON dataset_examples (dataset_id, id);

CREATE TABLE experiments (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    dataset_id      BLOB NOT NULL REFERENCES datasets (id),
    repetitions     INTEGER NOT NULL CHECK (repetitions >= 1),
    max_concurrency INTEGER CHECK (max_concurrency IS NULL OR max_concurrency >= 1),
    task            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'STOPPED'
                    CHECK (status IN ('RUNNING', 'STOPPED', 'COMPLETED', 'ERROR')),
    claimed_by      TEXT,
    claimed_at      TEXT,
    epoch           INTEGER NOT NULL DEFAULT 0,
    cooldown_until  TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX experiments_by_status ON experiments (status, claimed_at);
CREATE INDEX experiments_by_owner ON experiments (claimed_by);
CREATE INDEX experiments_by_dataset ON experiments (dataset_id);

CREATE TABLE evaluators (
    id            INTEGER PRIMARY KEY,
    experiment_id BLOB NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (experiment_id, name)
);
CREATE INDEX evaluators_by_experiment ON evaluators (experiment_id, id);

-- One row per (experiment, example, repetition); `epoch` is the claim epoch
-- of the write that produced the row (a failure under the current epoch is not
-- handed out again, one from an earlier epoch is retried).
CREATE TABLE runs (
    id                INTEGER PRIMARY KEY,
    experiment_id     BLOB NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    example_id        INTEGER NOT NULL REFERENCES dataset_examples (id) ON DELETE CASCADE,
    repetition        INTEGER NOT NULL CHECK (repetition >= 0),
    succeeded         INTEGER NOT NULL CHECK (succeeded IN (0, 1)),
    output            TEXT,
    error             TEXT,
    attempts          INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    total_latency_ms  INTEGER NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    epoch             INTEGER NOT NULL,
    started_at        TEXT NOT NULL,
    finished_at       TEXT NOT NULL,
    UNIQUE (experiment_id, example_id, repetition)
);
-- Successful runs of an experiment in id order: the eval sweep and progress.
CREATE INDEX runs_succeeded ON runs (experiment_id, succeeded, id);
-- Every run of an experiment in id order: result pages.
CREATE INDEX runs_by_experiment ON runs (experiment_id, id);

CREATE TABLE annotations (
    id                INTEGER PRIMARY KEY,
    experiment_id     BLOB NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    run_id            INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    evaluator_id      INTEGER NOT NULL REFERENCES evaluators (id) ON DELETE CASCADE,
    succeeded         INTEGER NOT NULL CHECK (succeeded IN (0, 1)),
    label             TEXT,
    score             REAL,
    explanation       TEXT,
    error             TEXT,
    attempts          INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    epoch             INTEGER NOT NULL,
    finished_at       TEXT NOT NULL,
    UNIQUE (run_id, evaluator_id)
);
-- Annotations of an experiment by run: the eval sweep and progress.
CREATE INDEX annotations_by_experiment ON annotations (experiment_id, run_id);
CREATE INDEX annotations_by_evaluator ON annotations (evaluator_id);

CREATE TABLE experiment_logs (
    id            INTEGER PRIMARY KEY,
    experiment_id BLOB NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    level         TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message       TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX experiment_logs_by_experiment ON experiment_logs (experiment_id, id);

-- Learned rate limits per rate-limit key (DESIGN §6), as the advisor's JSON.
CREATE TABLE rate_limit_state (
    key        TEXT PRIMARY KEY NOT NULL,
    state      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
