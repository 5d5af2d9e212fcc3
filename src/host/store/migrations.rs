//! The store's schema, as append-only migrations. Never edit one that has
//! shipped: add another.

/// Schema migrations, in order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[&str] = &[
    // 1: connectors, environments, discovery, dSources (as users of source configs).
    r#"
    CREATE TABLE connectors (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        version        TEXT NOT NULL,
        build_number   TEXT NOT NULL,
        manifest       TEXT NOT NULL,
        schemas        TEXT NOT NULL,
        library_path   TEXT NOT NULL,
        library_sha256 TEXT NOT NULL,
        installed_at   INTEGER NOT NULL
    );
    CREATE TABLE environments (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        kind         TEXT NOT NULL CHECK (kind IN ('local')),
        os_user      TEXT NOT NULL,
        scratch      TEXT NOT NULL,
        added_at     INTEGER NOT NULL,
        refreshed_at INTEGER
    );
    CREATE TABLE repositories (
        id             INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        identity       TEXT NOT NULL,
        name           TEXT NOT NULL,
        document       TEXT NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('present', 'missing')),
        UNIQUE (environment_id, identity)
    );
    CREATE TABLE source_configs (
        id             INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        repository_id  INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        identity       TEXT NOT NULL,
        name           TEXT NOT NULL,
        document       TEXT NOT NULL,
        origin         TEXT NOT NULL CHECK (origin IN ('discovered', 'manual')),
        state          TEXT NOT NULL CHECK (state IN ('present', 'missing')),
        UNIQUE (environment_id, identity)
    );
    CREATE TABLE dsources (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        source_config_id INTEGER NOT NULL REFERENCES source_configs(id) ON DELETE RESTRICT,
        parameters       TEXT NOT NULL,
        state            TEXT NOT NULL,
        created_at       INTEGER NOT NULL
    );
    "#,
    // 2: storage (pool, datasets, their snapshots, mounts), timeflows and
    // snapshots with connector metadata, retention, VDBs; where dSources live.
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE datasets (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        path            TEXT NOT NULL,
        owner           TEXT,
        origin_snapshot INTEGER REFERENCES dataset_snapshots(id) ON DELETE RESTRICT,
        state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'destroying')),
        pid             INTEGER,
        created_at      INTEGER NOT NULL
    );
    CREATE TABLE dataset_snapshots (
        id         INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE RESTRICT,
        name       TEXT NOT NULL,
        path       TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'destroying')),
        pid        INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (dataset_id, name)
    );
    CREATE TABLE mounts (
        dataset_id INTEGER PRIMARY KEY REFERENCES datasets(id) ON DELETE RESTRICT,
        path       TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL CHECK (kind IN ('bind', 'direct'))
    );
    CREATE TABLE timeflows (
        id              INTEGER PRIMARY KEY,
        container_kind  TEXT NOT NULL CHECK (container_kind IN ('dsource', 'vdb')),
        container_id    INTEGER NOT NULL,
        parent_snapshot INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        created_at      INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        id                  INTEGER PRIMARY KEY,
        timeflow_id         INTEGER NOT NULL REFERENCES timeflows(id) ON DELETE RESTRICT,
        dataset_snapshot_id INTEGER NOT NULL REFERENCES dataset_snapshots(id) ON DELETE RESTRICT,
        metadata            TEXT NOT NULL,
        created_at          INTEGER NOT NULL
    );
    CREATE TABLE retention (
        container_kind TEXT NOT NULL,
        container_id   INTEGER NOT NULL,
        keep_count     INTEGER,
        keep_days      INTEGER,
        PRIMARY KEY (container_kind, container_id)
    );
    CREATE TABLE vdbs (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
        parent_kind     TEXT NOT NULL CHECK (parent_kind IN ('dsource', 'vdb', 'empty')),
        parent_id       INTEGER NOT NULL,
        parameters      TEXT NOT NULL,
        port            INTEGER NOT NULL UNIQUE,
        dataset         TEXT NOT NULL,
        mount_path      TEXT NOT NULL,
        state           TEXT NOT NULL,
        source_config   TEXT NOT NULL,
        origin_snapshot INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        pid             INTEGER,
        created_at      INTEGER NOT NULL
    );
    ALTER TABLE dsources ADD COLUMN pid INTEGER;
    ALTER TABLE dsources ADD COLUMN environment_id INTEGER REFERENCES environments(id);
    ALTER TABLE dsources ADD COLUMN dataset TEXT NOT NULL DEFAULT '';
    ALTER TABLE dsources ADD COLUMN mount_path TEXT NOT NULL DEFAULT '';
    "#,
    // 3: typed states (a CHECK on every state and kind column), one name
    // space for dSources and VDBs, jobs (what each command is doing, so a
    // killed one is repaired by the next), the dataset of each timeflow, and
    // secrets sealed apart from the parameters.
    r#"
    CREATE TABLE dsources_v3 (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        source_config_id INTEGER NOT NULL REFERENCES source_configs(id) ON DELETE RESTRICT,
        environment_id   INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
        parameters       TEXT NOT NULL CHECK (json_valid(parameters)),
        sealed           BLOB,
        state            TEXT NOT NULL
                         CHECK (state IN ('linking', 'enabled', 'disabled', 'resync_needed', 'deleting')),
        dataset          TEXT NOT NULL,
        mount_path       TEXT NOT NULL,
        created_at       INTEGER NOT NULL
    );
    INSERT INTO dsources_v3 (id, name, source_config_id, environment_id, parameters, state, dataset,
                             mount_path, created_at)
        SELECT d.id, d.name, d.source_config_id,
               coalesce(d.environment_id, (SELECT s.environment_id FROM source_configs s WHERE s.id = d.source_config_id)),
               d.parameters, d.state, d.dataset, d.mount_path, d.created_at
        FROM dsources d;
    CREATE TABLE vdbs_v3 (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
        parent_kind     TEXT NOT NULL CHECK (parent_kind IN ('dsource', 'vdb', 'empty')),
        parent_id       INTEGER NOT NULL,
        parameters      TEXT NOT NULL CHECK (json_valid(parameters)),
        sealed          BLOB,
        port            INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
        dataset         TEXT NOT NULL,
        mount_path      TEXT NOT NULL,
        state           TEXT NOT NULL
                        CHECK (state IN ('provisioning', 'running', 'stopped', 'disabled', 'deleting')),
        source_config   TEXT NOT NULL CHECK (json_valid(source_config)),
        origin_snapshot INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        created_at      INTEGER NOT NULL
    );
    INSERT INTO vdbs_v3 (id, name, environment_id, parent_kind, parent_id, parameters, port, dataset,
                         mount_path, state, source_config, origin_snapshot, created_at)
        SELECT id, name, environment_id, parent_kind, parent_id, parameters, port, dataset,
               mount_path, state, source_config, origin_snapshot, created_at
        FROM vdbs;
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('link', 'sync', 'enable_dsource', 'disable_dsource',
                        'delete_dsource', 'provision', 'create_empty', 'start', 'stop', 'enable_vdb',
                        'disable_vdb', 'delete_vdb', 'refresh', 'rewind', 'snapshot_vdb')),
        target_kind TEXT NOT NULL CHECK (target_kind IN ('dsource', 'vdb')),
        target_id   INTEGER NOT NULL,
        target_name TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'repaired')),
        step        TEXT NOT NULL DEFAULT 'begun'
                    CHECK (step IN ('begun', 'storage', 'connector', 'snapshot', 'committed')),
        details     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
        pid         INTEGER,
        pid_start   INTEGER,
        started_at  INTEGER NOT NULL,
        ended_at    INTEGER,
        error       TEXT
    );
    CREATE INDEX jobs_running ON jobs (target_kind, target_id) WHERE state = 'running';
    -- What an interrupted link or provision of an older pgvirt left is
    -- repaired like any interrupted job.
    INSERT INTO jobs (kind, target_kind, target_id, target_name, state, pid, started_at)
        SELECT 'link', 'dsource', id, name, 'running', pid, created_at FROM dsources WHERE state = 'linking';
    INSERT INTO jobs (kind, target_kind, target_id, target_name, state, pid, started_at)
        SELECT 'provision', 'vdb', id, name, 'running', pid, created_at FROM vdbs WHERE state = 'provisioning';
    DROP TABLE dsources;
    ALTER TABLE dsources_v3 RENAME TO dsources;
    DROP TABLE vdbs;
    ALTER TABLE vdbs_v3 RENAME TO vdbs;
    ALTER TABLE timeflows ADD COLUMN dataset TEXT;
    -- Made with `pgvirt pool dataset ...`: the operator's, not an orphan.
    ALTER TABLE datasets ADD COLUMN operator INTEGER NOT NULL DEFAULT 0 CHECK (operator IN (0, 1));
    ALTER TABLE dataset_snapshots ADD COLUMN operator INTEGER NOT NULL DEFAULT 0 CHECK (operator IN (0, 1));
    UPDATE timeflows SET dataset = CASE container_kind
        WHEN 'dsource' THEN (SELECT d.dataset FROM dsources d WHERE d.id = timeflows.container_id)
        ELSE (SELECT 'vdb-' || v.name || '-' || timeflows.id FROM vdbs v WHERE v.id = timeflows.container_id)
    END;
    CREATE TABLE retention_v3 (
        container_kind TEXT NOT NULL CHECK (container_kind IN ('dsource', 'vdb')),
        container_id   INTEGER NOT NULL,
        keep_count     INTEGER CHECK (keep_count >= 0),
        keep_days      INTEGER CHECK (keep_days >= 0),
        PRIMARY KEY (container_kind, container_id)
    );
    INSERT INTO retention_v3 SELECT * FROM retention WHERE container_kind IN ('dsource', 'vdb');
    DROP TABLE retention;
    ALTER TABLE retention_v3 RENAME TO retention;
    CREATE TRIGGER dsource_name_is_free BEFORE INSERT ON dsources
        WHEN EXISTS (SELECT 1 FROM vdbs WHERE name = NEW.name)
        BEGIN SELECT RAISE(ABORT, 'a VDB has this name'); END;
    CREATE TRIGGER vdb_name_is_free BEFORE INSERT ON vdbs
        WHEN EXISTS (SELECT 1 FROM dsources WHERE name = NEW.name)
        BEGIN SELECT RAISE(ABORT, 'a dSource has this name'); END;
    "#,
    // 4: prepared images of snapshots (recovered once, so clones start
    // without recovery), WAL retention, VDB quotas.
    r#"
    ALTER TABLE snapshots ADD COLUMN prepared_id INTEGER REFERENCES dataset_snapshots(id) ON DELETE SET NULL;
    ALTER TABLE retention ADD COLUMN wal_keep_days INTEGER CHECK (wal_keep_days >= 0);
    ALTER TABLE retention ADD COLUMN wal_keep_bytes INTEGER CHECK (wal_keep_bytes >= 0);
    ALTER TABLE vdbs ADD COLUMN quota_bytes INTEGER CHECK (quota_bytes > 0);
    "#,
    // 5: table exports (seed 004): chosen tables of a source config
    // shipped to targets (VDBs or source configs); what each run shipped.
    r#"
    CREATE TABLE exports (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        source_config_id INTEGER NOT NULL REFERENCES source_configs(id) ON DELETE RESTRICT,
        definition       TEXT NOT NULL CHECK (json_valid(definition)),
        state            TEXT NOT NULL CHECK (state IN ('added', 'installed')),
        stats            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(stats)),
        created_at       INTEGER NOT NULL
    );
    "#,
    // 6: API tokens (only their hashes).
    r#"
    CREATE TABLE api_tokens (
        name       TEXT PRIMARY KEY,
        sha256     TEXT NOT NULL UNIQUE,
        read_only  INTEGER NOT NULL CHECK (read_only IN (0, 1)),
        created_at INTEGER NOT NULL
    );
    "#,
    // 7: remote environments reached over SSH (host, port, SSH user, the
    // engine's copy of the key, time-outs). Rebuilt with foreign keys off
    // (see `Store::migrate`): the kind's CHECK changes.
    r#"
    CREATE TABLE environments_v7 (
        id                  INTEGER PRIMARY KEY,
        name                TEXT NOT NULL UNIQUE,
        kind                TEXT NOT NULL CHECK (kind IN ('local', 'ssh')),
        os_user             TEXT NOT NULL,
        scratch             TEXT NOT NULL,
        added_at            INTEGER NOT NULL,
        refreshed_at        INTEGER,
        host                TEXT,
        ssh_port            INTEGER CHECK (ssh_port BETWEEN 1 AND 65535),
        ssh_user            TEXT,
        key_file            TEXT,
        connect_timeout     INTEGER CHECK (connect_timeout > 0),
        alive_interval      INTEGER CHECK (alive_interval > 0),
        alive_count_max     INTEGER CHECK (alive_count_max > 0),
        CHECK ((kind = 'ssh') = (host IS NOT NULL AND ssh_port IS NOT NULL AND ssh_user IS NOT NULL
               AND key_file IS NOT NULL AND connect_timeout IS NOT NULL AND alive_interval IS NOT NULL
               AND alive_count_max IS NOT NULL))
    );
    INSERT INTO environments_v7 (id, name, kind, os_user, scratch, added_at, refreshed_at)
        SELECT id, name, kind, os_user, scratch, added_at, refreshed_at FROM environments;
    DROP TABLE environments;
    ALTER TABLE environments_v7 RENAME TO environments;
    "#,
];
