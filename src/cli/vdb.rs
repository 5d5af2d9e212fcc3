//! `pgvirt vdb`: provision VDBs from snapshots, and the rest of their life.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::flags::{self, Given};
use super::Context;
use crate::host::connectors::registry;
use crate::host::lifecycle::pitr::Target;
use crate::host::lifecycle::vdb;

#[derive(Args, Debug)]
pub struct VirtualParams {
    /// A whole virtual-source parameters document (JSON); flags add to it.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// Port (default: the first free one of PGVIRT_VDB_PORTS, 6500-6999).
    #[arg(long)]
    port: Option<u32>,
    /// Target environment (default: the parent's).
    #[arg(long)]
    env: Option<String>,
    /// Where to mount the VDB's dataset.
    #[arg(long)]
    mount_path: Option<String>,
    /// Setting NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

impl VirtualParams {
    /// The virtual-source document the flags describe.
    fn document(&self) -> anyhow::Result<(serde_json::Value, Given)> {
        let mut doc = flags::object_from(&self.params)?;
        let mut given = Given::default();
        if let Some(p) = self.port {
            given.set(&mut doc, "--port", "/port", json!(p));
        }
        if let Some(e) = &self.env {
            given.set(&mut doc, "--env", "/environment", json!(e));
        }
        if let Some(m) = &self.mount_path {
            given.set(&mut doc, "--mount-path", "/mount_path", json!(m));
        }
        if !self.set.is_empty() {
            let set = flags::settings(&self.set, "--set")?;
            given.set(&mut doc, "--set", "/config/set", json!(set));
        }
        Ok((doc, given))
    }
}

/// A moment to provision at, past a snapshot.
#[derive(Args, Debug)]
pub struct At {
    /// The moment: every transaction committed at or before it (RFC 3339 /
    /// ISO 8601, like '2026-12-02 14:03:00+00'; no zone: this host's).
    #[arg(long, value_name = "TIME", conflicts_with = "at_lsn")]
    at: Option<String>,
    /// The moment as an LSN (like 0/5A000000): the records before it.
    #[arg(long, value_name = "LSN")]
    at_lsn: Option<String>,
}

impl At {
    fn target(&self) -> anyhow::Result<Option<Target>> {
        Ok(Target::either(self.at.as_deref(), self.at_lsn.as_deref())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Provision a VDB from a dSource's or VDB's snapshot.
    Provision {
        /// Name of the new VDB (dSources and VDBs share one name space).
        name: String,
        /// The dSource or VDB to clone: NAME for its latest snapshot, NAME@ID for one.
        #[arg(long, value_name = "NAME[@SNAPSHOT]")]
        from: String,
        #[command(flatten)]
        at: At,
        /// Limit what the VDB may write on its clone (like 500M, 2G); past it
        /// PostgreSQL sees a full disk. Needs a ZFS or btrfs pool (XFS project quotas need a kernel with XFS quota support).
        #[arg(long, value_name = "SIZE", value_parser = super::flags::parse_size)]
        quota: Option<u64>,
        #[command(flatten)]
        params: VirtualParams,
    },
    /// Create an empty VDB (a new cluster).
    CreateEmpty {
        /// Name of the new VDB.
        name: String,
        #[command(flatten)]
        params: VirtualParams,
    },
    /// Start a stopped VDB (also after its server crashed).
    Start {
        /// The VDB.
        name: String,
    },
    /// Stop a VDB's server and unmount its data.
    Stop {
        /// The VDB.
        name: String,
    },
    /// ACTIVE or INACTIVE.
    Status {
        /// The VDB.
        name: String,
    },
    /// Bring a disabled VDB back.
    Enable {
        /// The VDB.
        name: String,
    },
    /// Stop a VDB and unmount it until it is enabled again.
    Disable {
        /// The VDB.
        name: String,
    },
    /// Delete the VDB: its processes, mounts and clone.
    Delete {
        /// The VDB.
        name: String,
        /// Delete the VDBs provisioned from its snapshots (and theirs) first.
        #[arg(long)]
        with_children: bool,
    },
    /// Refresh to the parent's latest snapshot (or --snapshot ID).
    Refresh {
        /// The VDB.
        name: String,
        /// A newer snapshot of the parent than its latest.
        #[arg(long, conflicts_with_all = ["at", "at_lsn"])]
        snapshot: Option<i64>,
        #[command(flatten)]
        at: At,
    },
    /// Rewind to one of the VDB's own snapshots, or to a moment after one
    /// (--at, --at-lsn: from the WAL the VDB keeps).
    Rewind {
        /// The VDB.
        name: String,
        /// The snapshot (see `pgvirt snapshot list --vdb NAME`).
        #[arg(long, required_unless_present_any = ["at", "at_lsn"], conflicts_with_all = ["at", "at_lsn"])]
        snapshot: Option<i64>,
        #[command(flatten)]
        at: At,
    },
    /// Set, change or lift a VDB's quota: what it may add on its clone.
    Quota {
        /// The VDB.
        name: String,
        /// The new quota (like 500M, 2G).
        #[arg(value_parser = super::flags::parse_size, required_unless_present = "none")]
        size: Option<u64>,
        /// Lift the quota.
        #[arg(long, conflicts_with = "size")]
        none: bool,
    },
    /// Take a snapshot of the VDB.
    Snapshot {
        /// The VDB.
        name: String,
    },
    /// One VDB, with its connection string.
    Show {
        /// The VDB.
        name: String,
    },
    /// All VDBs.
    List,
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let out = &cx.out;
    if let Cmd::List = cmd {
        return out.vdbs(&vdb::list(&store)?);
    }
    let shown = |v: &vdb::Vdb, what: &str| out.vdb(v, what);
    if let Cmd::Show { name } = &cmd {
        let v = vdb::get(&store, name)?;
        return out.vdb_with_quota(&v, "", vdb::quota_usage(&store, &v)?);
    }
    if let Cmd::Quota { name, size, .. } = &cmd {
        let v = vdb::set_quota(&store, name, *size)
            .with_context(|| format!("setting the quota of VDB {name}"))?;
        let headline = if size.is_some() {
            "quota set"
        } else {
            "quota lifted"
        };
        return out.vdb_with_quota(&v, headline, vdb::quota_usage(&store, &v)?);
    }
    let connector = registry::open(&store, None)?;
    let store = &store;
    let connector = &connector;
    match cmd {
        Cmd::Provision {
            name,
            from,
            at,
            quota,
            params,
        } => {
            let started = std::time::Instant::now();
            let (parameters, given) = params.document()?;
            let v = vdb::provision(
                store,
                connector,
                vdb::ProvisionRequest {
                    name: &name,
                    from: &from,
                    parameters,
                    target: at.target()?,
                    quota,
                },
            )
            .map_err(|e| given.name_flags(e))
            .with_context(|| format!("provisioning VDB {name} from {from}"))?;
            log::info!("provisioned {name} in {:.2?}", started.elapsed());
            shown(&v, "is ready")
        }
        Cmd::CreateEmpty { name, params } => {
            let (parameters, given) = params.document()?;
            let v = vdb::create_empty(
                store,
                connector,
                vdb::ProvisionRequest {
                    name: &name,
                    from: "",
                    parameters,
                    target: None,
                    quota: None,
                },
            )
            .map_err(|e| given.name_flags(e))
            .with_context(|| format!("creating empty VDB {name}"))?;
            shown(&v, "is ready")
        }
        Cmd::Start { name } => shown(
            &vdb::start(store, connector, &name).with_context(|| format!("starting VDB {name}"))?,
            "started",
        ),
        Cmd::Stop { name } => shown(
            &vdb::stop(store, connector, &name).with_context(|| format!("stopping VDB {name}"))?,
            "stopped",
        ),
        Cmd::Status { name } => {
            let status = vdb::status(store, connector, &name)?;
            out.message(&status.to_string(), json!({"name": name, "status": status}))
        }
        Cmd::Enable { name } => shown(
            &vdb::enable(store, connector, &name)
                .with_context(|| format!("enabling VDB {name}"))?,
            "enabled",
        ),
        Cmd::Disable { name } => shown(
            &vdb::disable(store, connector, &name)
                .with_context(|| format!("disabling VDB {name}"))?,
            "disabled",
        ),
        Cmd::Delete {
            name,
            with_children,
        } => {
            let deleted = if with_children {
                vdb::delete_tree(store, connector, &name)
            } else {
                vdb::delete(store, connector, &name).map(|()| vec![name.clone()])
            }
            .with_context(|| format!("deleting VDB {name}"))?;
            out.message(
                &format!("deleted VDB {}", deleted.join(", ")),
                json!({"deleted": name, "vdbs_deleted": deleted}),
            )
        }
        Cmd::Refresh { name, snapshot, at } => shown(
            &vdb::refresh(store, connector, &name, snapshot, at.target()?)
                .with_context(|| format!("refreshing VDB {name}"))?,
            "refreshed",
        ),
        Cmd::Rewind { name, snapshot, at } => shown(
            &vdb::rewind(store, connector, &name, snapshot, at.target()?)
                .with_context(|| format!("rewinding VDB {name}"))?,
            "rewound",
        ),
        Cmd::Snapshot { name } => {
            let s = vdb::snapshot(store, connector, &name)
                .with_context(|| format!("snapshotting VDB {name}"))?;
            out.message(
                &format!("VDB {name}: snapshot {}", s.id),
                serde_json::to_value(&s)?,
            )
        }
        Cmd::Show { .. } | Cmd::List | Cmd::Quota { .. } => Ok(()), // answered above
    }
}
