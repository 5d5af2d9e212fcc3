//! What an environment holds: repositories (installations) and source configs
//! (clusters), found by the connector's discovery or added by hand.
//!
//! A refresh merges by the identity fields the schemas name: a rediscovered
//! object keeps its id and gets the new document; one not found any more is
//! marked `missing`, never dropped, so nothing that uses it loses its target.

use std::collections::BTreeSet;

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::store::{self, columns, Store};

/// Whether the last discovery still found it (never dropped: what uses it
/// keeps its target).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Presence {
    Present,
    Missing,
}

/// How a source config came to be known.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ConfigOrigin {
    /// Found by the connector's discovery.
    Discovered,
    /// Added by hand (kept as written).
    Manual,
}

columns::text_enum_column!(Presence, ConfigOrigin);

#[derive(Debug, Clone, Serialize)]
pub struct Repository {
    pub id: i64,
    pub environment: String,
    pub name: String,
    pub state: Presence,
    pub document: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceConfig {
    pub id: i64,
    pub environment: String,
    pub repository_id: i64,
    pub name: String,
    pub origin: ConfigOrigin,
    pub state: Presence,
    pub document: Value,
}

/// Counts of what a refresh did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RefreshSummary {
    pub repositories_added: usize,
    pub repositories_updated: usize,
    pub repositories_missing: usize,
    pub source_configs_added: usize,
    pub source_configs_updated: usize,
    pub source_configs_missing: usize,
}

/// Runs discovery on `env` through `connector` and merges what it finds.
/// Discovery runs first; the store changes in one transaction at the end, so
/// a failed discovery changes nothing.
pub fn refresh(
    store: &mut Store,
    connector: &Connector,
    env: &Environment,
) -> Result<RefreshSummary> {
    let platform = HostPlatform::new(env);
    let input = json!({"environment": env.to_input()});
    let repos = connector.invoke("discovery.repository", &input, platform.clone())?;
    let repos = repos.as_array().cloned().unwrap_or_default();
    let mut found = Vec::new();
    for repo in repos {
        let input = json!({"environment": env.to_input(), "repository": repo});
        let configs = connector.invoke("discovery.source_config", &input, platform.clone())?;
        found.push((repo, configs.as_array().cloned().unwrap_or_default()));
    }
    let defs = connector.definitions.clone();
    let env_id = env.id;
    let path = store.path().to_owned();
    let summary = store.transaction(|tx| {
        let mut s = RefreshSummary::default();
        let err = |e: rusqlite::Error| Error::store(&path, e);
        let mut seen_repos = BTreeSet::new();
        let mut seen_configs = BTreeSet::new();
        for (repo, configs) in &found {
            let identity = defs.identity("repository", repo);
            let name = defs.display_name("repository", repo);
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM repositories WHERE environment_id = ?1 AND identity = ?2",
                    params![env_id, identity],
                    |r| r.get(0),
                )
                .ok();
            let repo_id = match existing {
                Some(id) => {
                    tx.execute(
                        "UPDATE repositories SET name = ?2, document = ?3, state = 'present' WHERE id = ?1",
                        params![id, name, repo.to_string()],
                    )
                    .map_err(err)?;
                    s.repositories_updated += 1;
                    id
                }
                None => {
                    tx.execute(
                        "INSERT INTO repositories (environment_id, identity, name, document, state)
                         VALUES (?1, ?2, ?3, ?4, 'present')",
                        params![env_id, identity, name, repo.to_string()],
                    )
                    .map_err(err)?;
                    s.repositories_added += 1;
                    tx.last_insert_rowid()
                }
            };
            seen_repos.insert(repo_id);
            for config in configs {
                let identity = defs.identity("source_config", config);
                let name = defs.display_name("source_config", config);
                let existing: Option<(i64, ConfigOrigin)> = tx
                    .query_row(
                        "SELECT id, origin FROM source_configs WHERE environment_id = ?1 AND identity = ?2",
                        params![env_id, identity],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .ok();
                match existing {
                    // Two installations can both see one cluster: first wins.
                    Some((id, _)) if seen_configs.contains(&id) => {}
                    // What a user added by hand stays as they wrote it.
                    Some((id, ConfigOrigin::Manual)) => {
                        seen_configs.insert(id);
                    }
                    Some((id, _)) => {
                        tx.execute(
                            "UPDATE source_configs SET repository_id = ?2, name = ?3, document = ?4, state = 'present'
                             WHERE id = ?1",
                            params![id, repo_id, name, config.to_string()],
                        )
                        .map_err(err)?;
                        s.source_configs_updated += 1;
                        seen_configs.insert(id);
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO source_configs (environment_id, repository_id, identity, name, document, origin, state)
                             VALUES (?1, ?2, ?3, ?4, ?5, 'discovered', 'present')",
                            params![env_id, repo_id, identity, name, config.to_string()],
                        )
                        .map_err(err)?;
                        s.source_configs_added += 1;
                        seen_configs.insert(tx.last_insert_rowid());
                    }
                }
            }
        }
        let mut stmt = tx
            .prepare("SELECT id FROM repositories WHERE environment_id = ?1 AND state = 'present'")
            .map_err(err)?;
        let present: Vec<i64> = stmt
            .query_map([env_id], |r| r.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        for id in present.into_iter().filter(|id| !seen_repos.contains(id)) {
            tx.execute("UPDATE repositories SET state = 'missing' WHERE id = ?1", [id])
                .map_err(err)?;
            s.repositories_missing += 1;
        }
        let mut stmt = tx
            .prepare(
                "SELECT id FROM source_configs WHERE environment_id = ?1 AND state = 'present' AND origin = 'discovered'",
            )
            .map_err(err)?;
        let present: Vec<i64> = stmt
            .query_map([env_id], |r| r.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        for id in present.into_iter().filter(|id| !seen_configs.contains(id)) {
            tx.execute("UPDATE source_configs SET state = 'missing' WHERE id = ?1", [id])
                .map_err(err)?;
            s.source_configs_missing += 1;
        }
        tx.execute(
            "UPDATE environments SET refreshed_at = ?2 WHERE id = ?1",
            params![env_id, store::now()],
        )
        .map_err(err)?;
        Ok(s)
    })?;
    Ok(summary)
}

/// Repositories, of one environment or all.
pub fn repositories(store: &Store, env: Option<&str>) -> Result<Vec<Repository>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT r.id, e.name, r.name, r.state, r.document FROM repositories r
             JOIN environments e ON e.id = r.environment_id
             WHERE ?1 IS NULL OR e.name = ?1 ORDER BY e.name, r.id",
        )
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map([env], |r| {
            Ok(Repository {
                id: r.get(0)?,
                environment: r.get(1)?,
                name: r.get(2)?,
                state: r.get(3)?,
                document: columns::json(r, 4, || "document of a repository".into())?,
            })
        })
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

/// Source configs, of one environment or all.
pub fn source_configs(store: &Store, env: Option<&str>) -> Result<Vec<SourceConfig>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT s.id, e.name, s.repository_id, s.name, s.origin, s.state, s.document FROM source_configs s
             JOIN environments e ON e.id = s.environment_id
             WHERE ?1 IS NULL OR e.name = ?1 ORDER BY e.name, s.id",
        )
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map([env], |r| {
            Ok(SourceConfig {
                id: r.get(0)?,
                environment: r.get(1)?,
                repository_id: r.get(2)?,
                name: r.get(3)?,
                origin: r.get(4)?,
                state: r.get(5)?,
                document: columns::json(r, 6, || "document of a source config".into())?,
            })
        })
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

/// Finds a source config by id or name.
pub fn find_source_config(store: &Store, key: &str) -> Result<SourceConfig> {
    let all = source_configs(store, None)?;
    let matches: Vec<&SourceConfig> = all
        .iter()
        .filter(|s| s.id.to_string() == key || s.name == key)
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound(format!(
            "no source config {key:?}; see `pgvirt source list`"
        ))),
        _ => Err(Error::usage(format!(
            "{key:?} names several source configs; use the id (see `pgvirt source list`)"
        ))),
    }
}

/// Adds a source config by hand to `env`, on repository `repo` (id or name;
/// the only present one when absent). The document is validated first.
pub fn add_source_config(
    store: &Store,
    connector: &Connector,
    env: &str,
    repo: Option<&str>,
    mut document: Value,
) -> Result<SourceConfig> {
    if let Value::Object(doc) = &mut document {
        if !doc.contains_key("name") {
            // A name people can read: where it is and on which port.
            let dir = doc
                .get("data_directory")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let port = doc
                .get("port")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into());
            doc.insert("name".into(), json!(format!("{dir} (port {port})")));
        }
    }
    let document = &document;
    let env = environments::get(store, env)?;
    let repos: Vec<Repository> = repositories(store, Some(&env.name))?
        .into_iter()
        .filter(|r| r.state == Presence::Present)
        .collect();
    let repository = match repo {
        Some(key) => repos
            .iter()
            .find(|r| r.id.to_string() == key || r.name == key)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "environment {} has no repository {key:?}; see `pgvirt repo list`",
                    env.name
                ))
            })?,
        None => match repos.as_slice() {
            [one] => one,
            [] => {
                return Err(Error::NotFound(format!(
                    "environment {} has no repositories; run `pgvirt env refresh {}` first",
                    env.name, env.name
                )))
            }
            _ => {
                return Err(Error::usage(
                    "the environment has several repositories; choose one with --repo",
                ))
            }
        },
    };
    connector
        .definitions
        .validate("source_config", document, "source config")?;
    let identity = connector.definitions.identity("source_config", document);
    let name = connector
        .definitions
        .display_name("source_config", document);
    let taken: Option<i64> = store.optional(store.conn().query_row(
        "SELECT id FROM source_configs WHERE environment_id = ?1 AND identity = ?2",
        params![env.id, identity],
        |r| r.get(0),
    ))?;
    if let Some(id) = taken {
        return Err(Error::Conflict(format!(
            "source config {id} on {} has the same identity {identity}",
            env.name
        )));
    }
    store
        .conn()
        .execute(
            "INSERT INTO source_configs (environment_id, repository_id, identity, name, document, origin, state)
             VALUES (?1, ?2, ?3, ?4, ?5, 'manual', 'present')",
            params![env.id, repository.id, identity, name, document.to_string()],
        )
        .map_err(|e| store.err(e))?;
    find_source_config(store, &store.conn().last_insert_rowid().to_string())
}

/// Removes a source config, refused while a dSource uses it.
pub fn remove_source_config(store: &Store, key: &str) -> Result<SourceConfig> {
    let config = find_source_config(store, key)?;
    let users: Vec<String> = {
        let mut stmt = store
            .conn()
            .prepare("SELECT name FROM dsources WHERE source_config_id = ?1 ORDER BY name")
            .map_err(|e| store.err(e))?;
        let rows = stmt
            .query_map([config.id], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))?
    };
    if !users.is_empty() {
        return Err(Error::Refused(format!(
            "source config {} ({}) is used by dSource {}; delete the dSource first",
            config.id,
            config.name,
            users.join(", ")
        )));
    }
    store
        .conn()
        .execute("DELETE FROM source_configs WHERE id = ?1", [config.id])
        .map_err(|e| store.err(e))?;
    Ok(config)
}
