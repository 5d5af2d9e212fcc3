//! Installed connectors: install (a lower version is refused naming both,
//! the same version is a no-op, a higher one runs its data migrations, see
//! [`upgrade`]), list, and open the one to use.
//!
//! An install or upgrade commits in one store transaction: the migrated
//! documents and the switch to the new release land together or not at
//! all. The new library is copied to its own directory first; until the
//! commit, nothing refers to it, so a kill midway leaves the old release
//! fully in place (the next install of that release writes over the copy).
//!
//! Installing copies the library into the engine's data directory
//! (`connectors/<id>/<version>+<build>/`) beside a `connector.json`, so later
//! commands load exactly what was validated, and checks its sha256 again at
//! every load.

use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;

use serde_json::Value;

use crate::host::connectors::loader::Connector;
use crate::host::connectors::manifest::Manifest;
use crate::host::connectors::package::{LibraryPlacement, Package};
use crate::host::connectors::scratch;
use crate::host::connectors::upgrade::{self, Migrated, Plan};
use crate::host::error::{Error, Result};
use crate::host::files;
use crate::host::lifecycle::jobs;
use crate::host::store::{self, Store};

/// An installed connector, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    pub id: String,
    pub name: String,
    pub version: String,
    pub build_number: String,
    pub library_path: PathBuf,
    pub library_sha256: String,
    pub installed_at: i64,
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallOutcome {
    pub installed: Installed,
    /// The version it replaced, if any.
    pub previous_version: Option<String>,
    /// The same version and library were installed already: nothing was done.
    pub unchanged: bool,
    /// The data migrations an upgrade ran.
    pub migrated: Vec<Migrated>,
}

/// Installs the package at `origin` (directory or `connector.json`).
pub fn install(store: &Store, origin: &Path) -> Result<InstallOutcome> {
    install_package(store, &Package::read(origin, None)?)
}

/// Installs an uploaded `connector.json` (its JSON): what `POST
/// /connectors` does, through the same code as [`install`].
pub fn install_bundle(store: &Store, bundle: Value) -> Result<InstallOutcome> {
    let dir = scratch::incoming(store);
    install_package(
        store,
        &Package::from_bundle(bundle, "connector.json", &dir, &dir)?,
    )
}

/// Installs a package already read (see [`Package::from_library`]).
pub fn install_package(store: &Store, package: &Package) -> Result<InstallOutcome> {
    let bundle = package.bundle(LibraryPlacement::Beside)?; // validates everything
    let manifest: Manifest = serde_json::from_value(package.manifest_value.clone())
        .map_err(|e| Error::usage(format!("manifest: {e}")))?;
    let new_key = manifest.version_key()?;
    let previous = find(store, &manifest.id)?;
    let mut plan = Plan::default();
    if let Some(prev) = &previous {
        let prev_manifest = manifest_of(store, &prev.id)?;
        let prev_key = prev_manifest.version_key()?;
        if new_key == prev_key && same_library(package, prev) {
            return Ok(InstallOutcome {
                installed: prev.clone(),
                previous_version: Some(format!("{}+{}", prev.version, prev.build_number)),
                unchanged: true,
                migrated: Vec::new(),
            });
        }
        if new_key < prev_key {
            return Err(Error::Conflict(format!(
                "connector {} {} (build {}) is older than the installed {} (build {}); downgrades are not supported",
                manifest.name, manifest.version, manifest.build_number, prev.version, prev.build_number
            )));
        }
        if new_key > prev_key {
            plan = Plan::between(&prev_manifest, &manifest);
        }
    }
    let dir = store
        .data_dir()
        .join("connectors")
        .join(&manifest.id)
        .join(format!("{}+{}", manifest.version, manifest.build_number));
    files::create_private_dir(&dir)?;
    scratch::mark(&dir).map_err(|e| Error::io("cannot write in", &dir, e))?;
    let outcome = place_and_commit(store, package, &bundle, &manifest, &dir, previous, &plan);
    // Committed or not, the release is no longer being installed; one the
    // store does not refer to goes.
    let referenced = list(store)
        .map(|all| all.iter().any(|c| c.library_path.starts_with(&dir)))
        .unwrap_or(true);
    if outcome.is_err() && !referenced {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        scratch::unmark(&dir);
    }
    outcome
}

/// Copies the library into the release's directory `dir`, then, in one
/// transaction, runs the migrations of `plan` and switches to the release.
fn place_and_commit(
    store: &Store,
    package: &Package,
    bundle: &Value,
    manifest: &Manifest,
    dir: &Path,
    previous: Option<Installed>,
    plan: &Plan,
) -> Result<InstallOutcome> {
    let source_lib = package
        .library
        .as_deref()
        .ok_or_else(|| Error::usage("connector library not found"))?;
    let lib_path = dir.join(&manifest.library);
    let tmp = dir.join(format!(".{}.tmp", manifest.library));
    std::fs::copy(source_lib, &tmp)
        .map_err(|e| Error::io("cannot copy the connector library to", &tmp, e))?;
    files::set_mode(&tmp, 0o755)?;
    std::fs::rename(&tmp, &lib_path).map_err(|e| Error::io("cannot install", &lib_path, e))?;
    let sha = files::sha256_file(&lib_path)?;
    let bundle_text =
        serde_json::to_string_pretty(bundle).map_err(|e| Error::usage(e.to_string()))?;
    let bundle_path = dir.join("connector.json");
    files::write_atomic(&bundle_path, bundle_text.as_bytes(), 0o644)?;
    // The migrations run in the library just installed, as later commands
    // will load it.
    let connector = if plan.is_empty() {
        None
    } else {
        Some(Package::read(&bundle_path, None)?.open()?)
    };
    let schemas = package.schemas_value().to_string();
    let migrated = store.atomically(|| {
        // The write first: it takes the store's write lock, so no job can
        // begin until this commits.
        store
            .conn()
            .execute(
                "INSERT INTO connectors (id, name, version, build_number, manifest, schemas, library_path, library_sha256, installed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET name = ?2, version = ?3, build_number = ?4, manifest = ?5,
                     schemas = ?6, library_path = ?7, library_sha256 = ?8, installed_at = ?9",
                params![
                    manifest.id,
                    manifest.name,
                    manifest.version,
                    manifest.build_number,
                    package.manifest_value.to_string(),
                    schemas,
                    lib_path.to_string_lossy(),
                    sha,
                    store::now()
                ],
            )
            .map_err(|e| store.err(e))?;
        let Some(connector) = &connector else {
            return Ok(Vec::new());
        };
        let from = previous
            .as_ref()
            .map(|p| format!("{} {}+{}", p.name, p.version, p.build_number))
            .unwrap_or_default();
        let busy: Vec<_> = jobs::running(store)?
            .into_iter()
            .filter(|j| j.is_alive())
            .collect();
        if let Some(job) = busy.first() {
            return Err(Error::Conflict(format!(
                "cannot upgrade {from} to {} while job {} ({} of {} {}) runs: its documents would change under it;                  wait for it to end and install again",
                manifest.label(),
                job.id,
                job.kind,
                job.target_kind,
                job.target_name
            )));
        }
        let migrated = upgrade::run(store, connector, plan).map_err(|e| {
            Error::Refused(format!(
                "cannot upgrade {from} to {}: {e}\nnothing was changed; {from} stays installed. \
                 Fix the stored document (or the connector's migration) and install again",
                manifest.label()
            ))
        })?;
        crate::host::storage::fault_pause(upgrade::FAULT_STEP);
        Ok(migrated)
    })?;
    let installed =
        find(store, &manifest.id)?.ok_or_else(|| Error::NotFound("connector vanished".into()))?;
    Ok(InstallOutcome {
        installed,
        previous_version: previous.map(|p| format!("{}+{}", p.version, p.build_number)),
        unchanged: false,
        migrated,
    })
}

/// Whether the package's library is the one installed, and still intact.
fn same_library(package: &Package, installed: &Installed) -> bool {
    let sha = |p: &Path| files::sha256_file(p).ok();
    package.library.as_deref().and_then(sha).as_ref() == Some(&installed.library_sha256)
        && sha(&installed.library_path).as_ref() == Some(&installed.library_sha256)
}

pub fn list(store: &Store) -> Result<Vec<Installed>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT id, name, version, build_number, library_path, library_sha256, installed_at
             FROM connectors ORDER BY name",
        )
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map([], row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

fn find(store: &Store, id: &str) -> Result<Option<Installed>> {
    store.optional(store.conn().query_row(
        "SELECT id, name, version, build_number, library_path, library_sha256, installed_at
         FROM connectors WHERE id = ?1",
        [id],
        row,
    ))
}

fn manifest_of(store: &Store, id: &str) -> Result<Manifest> {
    let text: String = store
        .conn()
        .query_row("SELECT manifest FROM connectors WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .map_err(|e| store.err(e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::usage(format!("stored manifest of {id} is unreadable: {e}")))
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Installed> {
    Ok(Installed {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        build_number: r.get(3)?,
        library_path: PathBuf::from(r.get::<_, String>(4)?),
        library_sha256: r.get(5)?,
        installed_at: r.get(6)?,
    })
}

/// Opens the installed connector to use: the one named (by name or id), or
/// the only one installed.
pub fn open(store: &Store, name: Option<&str>) -> Result<Connector> {
    let all = list(store)?;
    let chosen = match name {
        Some(n) => all
            .iter()
            .find(|c| c.name == n || c.id == n)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no connector {n:?} is installed; see `pgvirt connector list`"
                ))
            })?,
        None => match all.as_slice() {
            [one] => one,
            [] => return Err(Error::NotFound(
                "no connector is installed; run `pgvirt connector install <dir|connector.json>`"
                    .into(),
            )),
            _ => {
                return Err(Error::usage(format!(
                    "several connectors are installed ({}); name one with --connector",
                    all.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    };
    let actual = files::sha256_file(&chosen.library_path)?;
    if actual != chosen.library_sha256 {
        return Err(Error::Conflict(format!(
            "the installed library {} changed since it was installed (sha256 {actual}, expected {}); install the connector again",
            chosen.library_path.display(),
            chosen.library_sha256
        )));
    }
    let bundle = chosen
        .library_path
        .parent()
        .map(|d| d.join("connector.json"))
        .ok_or_else(|| Error::NotFound("installed connector has no directory".into()))?;
    Package::read(&bundle, None)?.open()
}
