"""The catalog's schema, as migrations: `MIGRATIONS[i]` takes a database from version i to i + 1.

Append, never edit: a released migration has already run on somebody's data directory.
Statements are separated by semicolons, so comments must not contain one.
"""

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the catalog, users and model versions.
    """
    CREATE TABLE images (
        id            TEXT PRIMARY KEY,          -- sha256 of the file's bytes
        original_name TEXT NOT NULL,
        label         TEXT,                      -- category, e.g. animals/mammals/cats
        split         TEXT NOT NULL CHECK (split IN ('train', 'test')),
        width         INTEGER NOT NULL,
        height        INTEGER NOT NULL,
        file          TEXT NOT NULL,             -- path relative to the images folder
        source        TEXT NOT NULL,             -- where it was ingested from
        added_at      TEXT NOT NULL
    );
    CREATE INDEX images_label ON images(label);
    CREATE TABLE users (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL UNIQUE,
        location   TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE model_versions (
        version    TEXT PRIMARY KEY,
        encoder    TEXT NOT NULL,                -- registry name of the base encoder
        parent     TEXT REFERENCES model_versions(version),
        active     INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
        created_at TEXT NOT NULL,
        card       TEXT NOT NULL DEFAULT '{}'    -- JSON: architecture, training summary, metrics
    );
    CREATE UNIQUE INDEX one_active_version ON model_versions(active) WHERE active = 1;
    """,
    # 1 -> 2: the feedback log (issue: feedback logged exactly).
    """
    CREATE TABLE query_images (
        id       TEXT PRIMARY KEY,               -- sha256 of an uploaded query's bytes
        file     TEXT NOT NULL,                  -- path relative to the queries folder
        width    INTEGER NOT NULL,
        height   INTEGER NOT NULL,
        added_at TEXT NOT NULL
    );
    CREATE TABLE queries (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id        INTEGER NOT NULL REFERENCES users(id),
        query_image_id TEXT NOT NULL,            -- images.id (gallery pick) or query_images.id
        model_version  TEXT NOT NULL REFERENCES model_versions(version),
        parent_id      INTEGER REFERENCES queries(id),  -- the query a refinement came from
        source         TEXT NOT NULL CHECK (source IN ('upload', 'gallery', 'refine', 'simulate')),
        n_results      INTEGER NOT NULL CHECK (n_results >= 0),
        location       TEXT,
        created_at     TEXT NOT NULL
    );
    CREATE INDEX queries_parent ON queries(parent_id);
    CREATE TABLE interactions (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id            INTEGER NOT NULL REFERENCES users(id),
        query_id           INTEGER NOT NULL REFERENCES queries(id),
        query_image_id     TEXT NOT NULL,
        displayed_image_id TEXT NOT NULL,
        position           INTEGER NOT NULL CHECK (position >= 1),
        interaction_type   TEXT NOT NULL
            CHECK (interaction_type IN ('impression', 'click', 'similar', 'not_similar', 'grade')),
        value              REAL,                 -- labels 1 set / 0 undone, grades 0-3 or NULL
        score              REAL,                 -- the similarity shown, on impressions
        location           TEXT,
        model_version      TEXT NOT NULL,
        timestamp          TEXT NOT NULL
    );
    CREATE UNIQUE INDEX one_impression_per_result
        ON interactions(query_id, displayed_image_id) WHERE interaction_type = 'impression';
    CREATE INDEX interactions_query ON interactions(query_id, displayed_image_id);
    CREATE INDEX interactions_type ON interactions(interaction_type, model_version)
    """,
    # 2 -> 3: stored evaluation runs (issue: metrics that can be trusted).
    """
    CREATE TABLE evaluation_runs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        model_version TEXT NOT NULL REFERENCES model_versions(version),
        split         TEXT NOT NULL CHECK (split IN ('all', 'train', 'test')),
        k             INTEGER NOT NULL CHECK (k >= 1),
        relevance     TEXT NOT NULL CHECK (relevance IN ('labels', 'feedback')),
        n_queries     INTEGER NOT NULL,
        n_excluded    INTEGER NOT NULL,
        metrics       TEXT NOT NULL,             -- JSON: mrr, map, precision_at_k, …
        per_label     TEXT NOT NULL DEFAULT '[]',  -- JSON: one object per label
        signature     TEXT NOT NULL,             -- the gallery (and log) state it measured
        seconds       REAL NOT NULL,
        created_at    TEXT NOT NULL
    );
    CREATE INDEX evaluation_runs_lookup ON evaluation_runs(model_version, split, k, relevance)
    """,
    # 3 -> 4: background training runs (issue: contrastive fine-tuning on feedback).
    """
    CREATE TABLE training_runs (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        status     TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'cancelling', 'cancelled', 'done', 'failed')),
        parent     TEXT NOT NULL REFERENCES model_versions(version),
        version    TEXT,                          -- the version it created, once done
        settings   TEXT NOT NULL,                 -- JSON: TrainSettings
        progress   TEXT NOT NULL DEFAULT '{}',    -- JSON: epoch, epochs, step, steps, loss, eta_s
        losses     TEXT NOT NULL DEFAULT '[]',    -- JSON: per epoch train and val loss
        message    TEXT,                          -- why it failed, or its summary
        pid        INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE UNIQUE INDEX one_live_training ON training_runs((1))
        WHERE status IN ('queued', 'running', 'cancelling')
    """,
)
