//! Provisioning: a VDB from a snapshot of a dSource or VDB (`configure`),
//! or an empty one (`initialize`). On failure, or when cut short, nothing is
//! left: no row, dataset, mount or server.

use std::path::PathBuf;

use rusqlite::params;
use serde_json::Value;

use super::{
    choose_port, destroy, get, input_for, mount, next_dataset, owner, run_hook, set_config,
    ParentKind, Vdb, VdbState,
};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{Job, JobKind, Step};
use crate::host::lifecycle::pitr::{self, Target};
use crate::host::lifecycle::timeflow::{self, ContainerKind, Snapshot};
use crate::host::lifecycle::{dsource, names, placement};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

/// Where a provision starts from: a dSource or VDB and one of its snapshots.
pub struct Origin {
    pub kind: ContainerKind,
    pub id: i64,
    pub name: String,
    pub environment: String,
    pub snapshot: Snapshot,
}

/// Resolves `name[@snapshot]` to a parent and one of its snapshots (its
/// latest when none is named).
pub fn resolve_origin(store: &Store, spec: &str) -> Result<Origin> {
    let (name, snap) = match spec.split_once('@') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    let (kind, id, environment) = if let Some(d) = dsource::find(store, name)? {
        (ContainerKind::Dsource, d.id, d.environment)
    } else if let Some(v) = super::find(store, name)? {
        (ContainerKind::Vdb, v.id, v.environment)
    } else {
        return Err(Error::NotFound(format!(
            "--from {spec}: no dSource or VDB named {name:?}"
        )));
    };
    let snapshots = timeflow::snapshots(store, kind, id)?;
    let snapshot = match snap {
        Some(s) => {
            let sid: i64 = s
                .parse()
                .map_err(|_| Error::usage(format!("--from {spec}: {s:?} is not a snapshot id")))?;
            snapshots.into_iter().find(|x| x.id == sid).ok_or_else(|| {
                Error::NotFound(format!(
                    "{} {name} has no snapshot {sid}; see `pgvirt snapshot list`",
                    kind.title()
                ))
            })?
        }
        None => snapshots.into_iter().last().ok_or_else(|| {
            Error::NotFound(format!("{} {name} has no snapshots yet", kind.title()))
        })?,
    };
    Ok(Origin {
        kind,
        id,
        name: name.to_owned(),
        environment,
        snapshot,
    })
}

pub(super) fn check_provisionable(snapshot: &Snapshot) -> Result<()> {
    if snapshot
        .metadata
        .get("provisionable")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Ok(());
    }
    let reason = snapshot
        .metadata
        .get("not_provisionable_reason")
        .and_then(Value::as_str)
        .unwrap_or("it is marked not provisionable");
    Err(Error::Conflict(format!(
        "snapshot {} cannot be provisioned: {reason}",
        snapshot.id
    )))
}

/// What `provision` needs. The port and environment, when given, are in
/// `parameters` (as `port` and `environment`), so flags pass the same
/// schema checks as documents.
pub struct ProvisionRequest<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub parameters: Value,
    /// A moment to recover to (`--at`, `--at-lsn`), past a snapshot.
    pub target: Option<Target>,
    /// How much the VDB may add on its clone (`--quota`).
    pub quota: Option<u64>,
}

/// Provisions a VDB and leaves it running. On failure nothing is left.
/// With a target, from the latest snapshot at or before it, recovered with
/// the kept WAL to exactly that moment.
pub fn provision(
    store: &Store,
    connector: &Connector,
    mut req: ProvisionRequest<'_>,
) -> Result<Vdb> {
    let mut origin = resolve_origin(store, req.from)?;
    if let Some(target) = &req.target {
        if req.from.contains('@') {
            return Err(Error::usage(format!(
                "--from {} names a snapshot and --at a moment: give one of them",
                req.from
            )));
        }
        origin.snapshot = at_target(store, connector, &origin, target)?;
    }
    req.target = req.target.filter(|t| t.past(&origin.snapshot));
    check_provisionable(&origin.snapshot)?;
    create(store, connector, req, Some(origin))
}

/// The snapshot a moment is provisioned from (refused, printing the
/// ranges, when no range holds it).
pub(super) fn at_target(
    store: &Store,
    connector: &Connector,
    origin: &Origin,
    target: &Target,
) -> Result<Snapshot> {
    if origin.kind == ContainerKind::Vdb {
        let v = super::get(store, &origin.name)?;
        super::wal::archive_now(store, connector, &v)?;
        let ranges = super::wal::ranges(store, connector, &v)?;
        let snapshots = timeflow::snapshots(store, ContainerKind::Vdb, v.id)?;
        return Ok(pitr::resolve(&snapshots, &ranges, target, &format!("VDB {}", v.name))?.clone());
    }
    let d = dsource::get(store, &origin.name)?;
    let method = crate::abi::IngestionMethod::of(&d.parameters);
    if matches!(
        method,
        crate::abi::IngestionMethod::StagingPush
            | crate::abi::IngestionMethod::SingleDatabase
            | crate::abi::IngestionMethod::LogicalReplication
    ) {
        return Err(Error::usage(format!(
            "a moment (--at, --at-lsn) is not available for the {method} method: dSource {} keeps no WAL between its snapshots; provision one of its snapshots (`pgvirt snapshot list --dsource {}`)",
            d.name, d.name
        )));
    }
    if dsource::wal_path(store, &d)?.is_none() {
        return Err(Error::usage(format!(
            "dSource {} keeps no WAL to recover to a moment with (it is not available for this method, or it was linked before pgvirt kept WAL: resync it)",
            d.name
        )));
    }
    let ranges = dsource::ranges(store, connector, &d)?;
    let snapshots = timeflow::snapshots(store, ContainerKind::Dsource, d.id)?;
    Ok(pitr::resolve(&snapshots, &ranges, target, &format!("dSource {}", d.name))?.clone())
}

/// A clone of `origin`'s snapshot on `dataset` that recovers to a moment
/// past it, or from a snapshot as taken while staging replayed (not its
/// prepared image), reads the dSource's kept WAL: lent read-only for the
/// recovery. Sets `input`'s `wal` (and `recovery_target`).
pub(super) fn lend_parent_wal(
    store: &Store,
    pool: &Pool,
    origin: &Origin,
    target: Option<&Target>,
    dataset: &str,
    input: &mut Value,
) -> Result<()> {
    let raw = target.is_some() || origin.snapshot.prepared_id.is_none();
    if !(target.is_some() || raw && origin.snapshot.needs_kept_wal()) {
        return Ok(());
    }
    let kept = if origin.kind == ContainerKind::Vdb {
        let v = super::get(store, &origin.name)?;
        super::wal::kept_path(store, pool, &v, &origin.snapshot)?
    } else {
        dsource::wal_path(store, &dsource::get(store, &origin.name)?)?
    }
    .ok_or_else(|| {
        Error::NotFound(format!(
            "{} {} keeps no WAL",
            origin.kind.title(),
            origin.name
        ))
    })?;
    placement::lend_wal(pool, dataset, &kept, input)?;
    if let Some(target) = target {
        input["recovery_target"] = target.to_input();
    }
    Ok(())
}

/// Creates an empty VDB (a new cluster) with `virtual.initialize`.
pub fn create_empty(
    store: &Store,
    connector: &Connector,
    req: ProvisionRequest<'_>,
) -> Result<Vdb> {
    create(store, connector, req, None)
}

fn create(
    store: &Store,
    connector: &Connector,
    req: ProvisionRequest<'_>,
    origin: Option<Origin>,
) -> Result<Vdb> {
    names::check_free(store, req.name, "VDB name")?;
    connector.definitions.validate(
        "virtual_source",
        &req.parameters,
        "virtual-source parameters",
    )?;
    let asked = req
        .parameters
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    let port = choose_port(store, asked)?;
    let env_name = match req.parameters.get("environment").and_then(Value::as_str) {
        Some(e) => e.to_owned(),
        None => match &origin {
            Some(o) => o.environment.clone(),
            None => match environments::list(store)?
                .into_iter()
                .filter(environments::Environment::is_local)
                .collect::<Vec<_>>()
                .as_slice()
            {
                [one] => one.name.clone(),
                _ => return Err(Error::usage("name the environment with --env")),
            },
        },
    };
    let env = environments::get(store, &env_name)?;
    if !env.is_local() {
        return Err(Error::usage(format!(
            "--env {env_name}: VDBs run on the engine's host, where their storage is; \
             {env_name} is remote (serving storage to other hosts is not built: docs/remote-targets.md)"
        )));
    }
    let pool = Pool::open(store)?;
    let mount_path = match req.parameters.get("mount_path").and_then(Value::as_str) {
        Some(p) => PathBuf::from(p),
        None => pool.default_mount_path(&format!("vdb-{}", req.name)),
    };
    pool.check_mount_path(store, &mount_path, "mount_path")?;
    if req.quota.is_some() {
        pool.check_quota()
            .map_err(|e| Error::usage(format!("--quota: {e}")))?;
    }
    let (parent_kind, parent_id) = match &origin {
        Some(o) if o.kind == ContainerKind::Dsource => (ParentKind::Dsource, o.id),
        Some(o) => (ParentKind::Vdb, o.id),
        None => (ParentKind::Empty, 0),
    };
    let dataset = next_dataset(store, req.name)?;
    let (public, sealed) = store.seal(
        &owner(req.name),
        &req.parameters,
        &connector.definitions.secret_fields("virtual_source"),
    )?;
    let kind = if origin.is_some() {
        JobKind::Provision
    } else {
        JobKind::CreateEmpty
    };
    // The row and its job land together (see `dsource::link`).
    let (vdb, mut job) = store.atomically(|| {
        store
            .conn()
            .execute(
                "INSERT INTO vdbs (name, environment_id, parent_kind, parent_id, parameters, sealed, port, dataset,
                                   mount_path, state, source_config, origin_snapshot, created_at, quota_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '{}', ?11, ?12, ?13)",
                params![
                    req.name,
                    env.id,
                    parent_kind,
                    parent_id,
                    public.to_string(),
                    sealed,
                    port,
                    dataset,
                    mount_path.to_string_lossy(),
                    VdbState::Provisioning,
                    origin.as_ref().map(|o| o.snapshot.id),
                    store::now(),
                    req.quota.map(|q| q as i64),
                ],
            )
            .map_err(|e| store.err(e))?;
        let vdb = get(store, req.name)?;
        let job = Job::begin(store, kind, ContainerKind::Vdb, vdb.id, &vdb.name)?;
        Ok((vdb, job))
    })?;
    let result = (|| {
        job.note(store, "dataset", Value::String(dataset.clone()))?;
        job.step(store, Step::Storage)?;
        let user = env.user()?;
        match &origin {
            Some(o) => {
                {
                    // The prepared image starts without recovery; a moment past
                    // the snapshot recovers from the snapshot as taken.
                    let image = if req.target.is_some() {
                        o.snapshot.dataset_snapshot_id
                    } else {
                        o.snapshot.image()
                    };
                    pool.clone_snapshot(store, image, &dataset, Some(&user))?
                }
            }
            None => pool.create_dataset(store, &dataset, Some(&user))?,
        };
        if let Some(quota) = req.quota {
            pool.set_quota(store, &dataset, quota)?;
        }
        job.step(store, Step::Connector)?;
        let platform = HostPlatform::new(&env);
        let mut input = input_for(store, &pool, &vdb, &env)?;
        mount(store, connector, &pool, &vdb, &env, &mut input)?;
        if let Some(o) = &origin {
            lend_parent_wal(store, &pool, o, req.target.as_ref(), &dataset, &mut input)?;
        }
        let configured = match &origin {
            Some(o) => {
                input["snapshot"] = o.snapshot.metadata.clone();
                connector.invoke("virtual.configure", &input, platform)
            }
            None => connector.invoke("virtual.initialize", &input, platform),
        };
        placement::return_wal(&pool, &dataset)?;
        let config = configured?;
        store.atomically(|| {
            timeflow::create(
                store,
                ContainerKind::Vdb,
                vdb.id,
                origin.as_ref().map(|o| o.snapshot.id),
                &dataset,
            )?;
            set_config(store, vdb.id, &config, VdbState::Running)?;
            job.step(store, Step::Committed)
        })?;
        let vdb = get(store, req.name)?;
        if origin.is_some() {
            run_hook(&env, &vdb, "configure_clone")?;
        }
        Ok(vdb)
    })();
    match result {
        Ok(vdb) => {
            job.succeed(store)?;
            Ok(vdb)
        }
        Err(e) => {
            destroy(store, connector, &pool, &vdb);
            job.fail(store, &e)?;
            Err(e)
        }
    }
}
