//! Jobs: what each workflow is doing, recorded before it touches anything.
//!
//! A workflow on a dSource or VDB begins a job (which also keeps a second
//! command off the same object while it runs), notes each step and each
//! thing it makes, and ends it. A job still `running` whose process is gone
//! was cut short (SIGKILL, a crash, a reboot): the next command, whatever it
//! is, finds it with [`interrupted`] and repairs it (see
//! [`super::repair`]) before doing anything else.

use std::cell::RefCell;
use std::sync::Mutex;

use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

use super::timeflow::ContainerKind;
use crate::host::error::{Error, Result};
use crate::host::processes::ProcessId;
use crate::host::store::{self, columns, Store};

/// What a job does.
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
pub enum JobKind {
    Link,
    Sync,
    EnableDsource,
    DisableDsource,
    DeleteDsource,
    Provision,
    CreateEmpty,
    Start,
    Stop,
    EnableVdb,
    DisableVdb,
    DeleteVdb,
    Refresh,
    Rewind,
    SnapshotVdb,
}

/// Where a job is.
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
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    /// Cut short, then repaired by a later command.
    Repaired,
}

/// How far a workflow got, as its steps are noted.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Step {
    /// Recorded, nothing done yet.
    Begun,
    /// Datasets are being made (cloned, created).
    Storage,
    /// The connector is at work (ingest, configure, stop, start).
    Connector,
    /// A storage snapshot is being taken.
    Snapshot,
    /// The outcome is recorded in the store; only tidying is left.
    Committed,
}

columns::text_enum_column!(JobKind, JobState, Step);

/// One job.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub target_kind: ContainerKind,
    pub target_id: i64,
    pub target_name: String,
    pub state: JobState,
    pub step: Step,
    /// What the job made or replaced, as it goes (dataset names, ids).
    pub details: Value,
    pub pid: Option<i64>,
    #[serde(skip)]
    pub process: Option<ProcessId>,
    pub started_at: i64,
    /// Why it failed, or what its repair did.
    pub error: Option<String>,
    pub ended_at: Option<i64>,
}

/// Keeps the check for a running job and the insert of a new one together
/// among the threads of one process (`pgvirt serve` runs many jobs).
static BEGIN: Mutex<()> = Mutex::new(());

/// What [`on_begin`] keeps.
type BeginHook = Box<dyn FnMut(&Job)>;

thread_local! {
    /// Told the id of each job this thread begins (see [`on_begin`]).
    static ON_BEGIN: RefCell<Option<BeginHook>> = const { RefCell::new(None) };
}

/// Calls `f` with each job begun on this thread from now on: a caller that
/// runs a workflow in the background (the API) learns the job to answer
/// with as soon as it is recorded (maybe in a transaction not yet
/// committed: other connections see it a moment later).
pub fn on_begin(f: impl FnMut(&Job) + 'static) {
    ON_BEGIN.with(|hook| *hook.borrow_mut() = Some(Box::new(f)));
}

impl Job {
    /// Begins a job on an object. Refused while another live process works
    /// on the same object.
    pub fn begin(
        store: &Store,
        kind: JobKind,
        target_kind: ContainerKind,
        target_id: i64,
        target_name: &str,
    ) -> Result<Self> {
        let _one_at_a_time = BEGIN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = running_on(store, target_kind, target_id)?
            .into_iter()
            .find(|j| j.is_alive())
        {
            return Err(Error::Conflict(format!(
                "{} {target_name} is busy: job {} (process {}) is running `{}` on it since {}; wait for it to finish",
                target_kind.title(),
                other.id,
                other.pid.unwrap_or(0),
                other.kind,
                store::display_time(other.started_at)
            )));
        }
        let me = ProcessId::current();
        store
            .conn()
            .execute(
                "INSERT INTO jobs (kind, target_kind, target_id, target_name, state, step, details, pid, pid_start, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, '{}', ?7, ?8, ?9)",
                params![
                    kind,
                    target_kind,
                    target_id,
                    target_name,
                    JobState::Running,
                    Step::Begun,
                    me.pid,
                    me.start,
                    store::now()
                ],
            )
            .map_err(|e| store.err(e))?;
        let job = get(store, store.conn().last_insert_rowid())?;
        ON_BEGIN.with(|hook| {
            if let Some(f) = hook.borrow_mut().as_mut() {
                f(&job);
            }
        });
        Ok(job)
    }

    /// Whether the process running it is still there.
    pub fn is_alive(&self) -> bool {
        self.process.is_some_and(|p| p.alive())
    }

    /// Records how far the job got.
    pub fn step(&mut self, store: &Store, step: Step) -> Result<()> {
        store
            .conn()
            .execute(
                "UPDATE jobs SET step = ?2 WHERE id = ?1",
                params![self.id, step],
            )
            .map_err(|e| store.err(e))?;
        self.step = step;
        // The steps taken, with when, for those who follow the job.
        let mut steps = match self.details.get("steps") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        steps.push(serde_json::json!({"step": step, "at": store::now()}));
        self.note(store, "steps", Value::Array(steps))
    }

    /// Records a fact the repair needs (what was made), before it is made.
    pub fn note(&mut self, store: &Store, key: &str, value: Value) -> Result<()> {
        self.details[key] = value;
        store
            .conn()
            .execute(
                "UPDATE jobs SET details = ?2 WHERE id = ?1",
                params![self.id, self.details.to_string()],
            )
            .map_err(|e| store.err(e))?;
        Ok(())
    }

    /// A noted text.
    pub fn noted(&self, key: &str) -> Option<&str> {
        self.details.get(key).and_then(Value::as_str)
    }

    /// Ends the job, as `outcome` says.
    pub fn end<T>(&self, store: &Store, outcome: &Result<T>) -> Result<()> {
        match outcome {
            Ok(_) => self.succeed(store),
            Err(e) => self.fail(store, e),
        }
    }

    pub fn succeed(&self, store: &Store) -> Result<()> {
        self.finish(store, JobState::Succeeded, None)
    }

    pub fn fail(&self, store: &Store, error: &Error) -> Result<()> {
        self.finish(store, JobState::Failed, Some(error.to_string()))
    }

    /// Marks an interrupted job repaired.
    pub fn repaired(&self, store: &Store, what: &str) -> Result<()> {
        self.finish(store, JobState::Repaired, Some(what.to_owned()))
    }

    fn finish(&self, store: &Store, state: JobState, error: Option<String>) -> Result<()> {
        store
            .conn()
            .execute(
                "UPDATE jobs SET state = ?2, error = ?3, ended_at = ?4 WHERE id = ?1",
                params![self.id, state, error, store::now()],
            )
            .map_err(|e| store.err(e))?;
        Ok(())
    }
}

/// Runs `work` as a job on an object: begun before, ended after (failed or
/// succeeded), whatever `work` returns.
pub fn run<T>(
    store: &Store,
    kind: JobKind,
    target: (ContainerKind, i64, &str),
    work: impl FnOnce(&mut Job) -> Result<T>,
) -> Result<T> {
    let mut job = Job::begin(store, kind, target.0, target.1, target.2)?;
    let outcome = work(&mut job);
    job.end(store, &outcome)?;
    outcome
}

const COLUMNS: &str = "id, kind, target_kind, target_id, target_name, state, step, details, pid, pid_start, started_at, error, ended_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let id: i64 = r.get(0)?;
    let pid: Option<i64> = r.get(8)?;
    Ok(Job {
        id,
        kind: r.get(1)?,
        target_kind: r.get(2)?,
        target_id: r.get(3)?,
        target_name: r.get(4)?,
        state: r.get(5)?,
        step: r.get(6)?,
        details: columns::json(r, 7, || format!("details of job {id}"))?,
        pid,
        process: pid.map(|pid| ProcessId {
            pid,
            start: r.get(9).ok().flatten(),
        }),
        started_at: r.get(10)?,
        error: r.get(11)?,
        ended_at: r.get(12)?,
    })
}

/// One job by id.
pub fn get(store: &Store, id: i64) -> Result<Job> {
    find(store, id)?.ok_or_else(|| Error::NotFound(format!("no job {id}")))
}

/// One job by id, if there is one.
pub fn find(store: &Store, id: i64) -> Result<Option<Job>> {
    store.optional(store.conn().query_row(
        &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        row,
    ))
}

/// The newest `limit` jobs, oldest first.
pub fn recent(store: &Store, limit: u32) -> Result<Vec<Job>> {
    query(
        store,
        "id IN (SELECT id FROM jobs ORDER BY id DESC LIMIT ?1)",
        [limit],
    )
}

fn query(store: &Store, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Job>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE {sql} ORDER BY id"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map(args, row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

/// Running jobs on one object.
pub fn running_on(store: &Store, kind: ContainerKind, id: i64) -> Result<Vec<Job>> {
    query(
        store,
        "state = 'running' AND target_kind = ?1 AND target_id = ?2",
        params![kind, id],
    )
}

/// Every running job, of live processes or not.
pub fn running(store: &Store) -> Result<Vec<Job>> {
    query(store, "state = 'running'", [])
}

/// Jobs whose process is gone before they ended, oldest first.
pub fn interrupted(store: &Store) -> Result<Vec<Job>> {
    Ok(running(store)?
        .into_iter()
        .filter(|j| !j.is_alive())
        .collect())
}

/// Whether a live process is taking a snapshot of this dSource now.
pub fn syncing(store: &Store, dsource: i64) -> Result<bool> {
    Ok(running_on(store, ContainerKind::Dsource, dsource)?
        .iter()
        .any(|j| j.is_alive() && matches!(j.kind, JobKind::Sync | JobKind::Link)))
}
