//! Jobs over HTTP. A long operation runs on a thread of its own (with its
//! own store connection) and the request answers `202 Accepted` with the
//! job as soon as the workflow has recorded it (or at once with the error
//! if it is refused before it begins). `GET /jobs/{id}` gives its state,
//! steps and progress; `GET /jobs/{id}/events` follows it live (SSE).
//!
//! The jobs are the engine's own ([`crate::host::lifecycle::jobs`]): a
//! second change to a busy object is refused by the same check as on the
//! command line (409 naming the running job), and a job cut short by a
//! restart of `serve` is repaired as interrupted CLI work is.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::lifecycle::jobs::{self, Job, JobState, Step};
use crate::host::lifecycle::repair;
use crate::host::store::Store;

/// What this server knows of a job it started: the job as it began, and
/// how the whole request ended (a delete with its VDBs is several engine
/// jobs), once it has.
#[derive(Debug, Clone)]
pub struct Task {
    begun: Job,
    outcome: Option<Result<Value, ErrorBody>>,
}

pub type Tasks = Arc<Mutex<HashMap<i64, Task>>>;

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct JobView {
    pub id: i64,
    /// What it does: link, sync, provision, refresh, rewind, delete_vdb...
    pub kind: String,
    /// `dsource` or `vdb`.
    pub target_kind: String,
    pub target: String,
    /// `running`, `succeeded`, `failed`, or `interrupted` (cut short, then
    /// repaired).
    pub state: String,
    /// The step it is at: begun, storage, connector, snapshot, committed.
    pub step: String,
    /// Each step taken, with when (seconds since the epoch).
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
    /// 0 to 100.
    pub progress: u8,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// Why it failed (or what the repair did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// What it made (the VDB, the snapshot...), once it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

impl JobView {
    fn of(job: &Job, task: Option<&Task>) -> Self {
        let steps = match job.details.get("steps") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let (mut state, mut error, mut result) = match job.state {
            JobState::Running => ("running", None, None),
            JobState::Succeeded => ("succeeded", None, None),
            JobState::Failed => (
                "failed",
                job.error.as_ref().map(|e| plain_error(job, e)),
                None,
            ),
            JobState::Repaired => (
                "interrupted",
                job.error.as_ref().map(|e| plain_error(job, e)),
                None,
            ),
        };
        match task.map(|t| &t.outcome) {
            Some(None) => state = "running",
            Some(Some(Ok(v))) => {
                state = "succeeded";
                result = Some(v.clone());
            }
            Some(Some(Err(e))) => {
                state = "failed";
                error = Some(e.clone());
            }
            None => {}
        }
        let progress = match (state, job.step) {
            ("succeeded", _) => 100,
            (_, Step::Begun) => 5,
            (_, Step::Storage) => 25,
            (_, Step::Connector) => 50,
            (_, Step::Snapshot) => 75,
            (_, Step::Committed) => 95,
        };
        Self {
            id: job.id,
            kind: job.kind.to_string(),
            target_kind: job.target_kind.to_string(),
            target: job.target_name.clone(),
            state: state.to_owned(),
            step: job.step.to_string(),
            steps,
            progress,
            started_at: job.started_at,
            ended_at: job.ended_at,
            error,
            result,
        }
    }

    fn finished(&self) -> bool {
        self.state != "running"
    }
}

fn plain_error(job: &Job, why: &str) -> ErrorBody {
    ErrorBody {
        what: format!("job {} ({} of {})", job.id, job.kind, job.target_name),
        why: why.to_owned(),
        action: "read `why`; fix the cause and run the operation again".into(),
        problems: Vec::new(),
        job: Some(job.id),
    }
}

enum Message {
    Begun(Box<Job>),
    Done(Result<Value, ApiError>),
}

/// Runs `work` as a job: answers 202 with the job once the workflow has
/// begun one, or the error that refused it before; 200 if it finished
/// without a job.
pub async fn launch<T: Serialize>(
    state: &AppState,
    what: String,
    body_at: &'static str,
    work: impl FnOnce(&Store) -> crate::host::Result<T> + Send + 'static,
) -> Result<Response, ApiError> {
    let (tx, rx) = std::sync::mpsc::channel::<Message>();
    let path = state.store_path.clone();
    let tasks = state.tasks.clone();
    let what_here = what.clone();
    std::thread::Builder::new()
        .name("pgvirt-job".into())
        .spawn(move || {
            let first: Rc<Cell<Option<i64>>> = Rc::new(Cell::new(None));
            {
                let (first, tx, tasks) = (first.clone(), tx.clone(), tasks.clone());
                jobs::on_begin(move |job| {
                    if first.get().is_none() {
                        first.set(Some(job.id));
                        let task = Task {
                            begun: job.clone(),
                            outcome: None,
                        };
                        lock(&tasks).insert(job.id, task);
                        let _ = tx.send(Message::Begun(Box::new(job.clone())));
                    }
                });
            }
            let outcome = Store::open(&path)
                .and_then(|store| {
                    for said in repair::repair_interrupted(&store)? {
                        log::warn!("{said}");
                    }
                    work(&store)
                })
                .and_then(|v| {
                    serde_json::to_value(v)
                        .map_err(|e| crate::host::Error::usage(format!("result: {e}")))
                })
                .map_err(|e| ApiError::from_host(&what, e, body_at));
            if let Some(id) = first.get() {
                if let Some(task) = lock(&tasks).get_mut(&id) {
                    task.outcome = Some(outcome.clone().map_err(|e| e.body));
                }
            }
            let _ = tx.send(Message::Done(outcome));
        })
        .map_err(|e| ApiError::internal(&what_here, format!("cannot start a thread: {e}")))?;
    let first = tokio::task::spawn_blocking(move || rx.recv())
        .await
        .map_err(|e| ApiError::internal(&what_here, e.to_string()))?
        .map_err(|e| ApiError::internal(&what_here, e.to_string()))?;
    match first {
        Message::Begun(job) => {
            let id = job.id;
            let view = JobView::of(
                &job,
                Some(&Task {
                    begun: (*job).clone(),
                    outcome: None,
                }),
            );
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, format!("/jobs/{id}"))],
                Json(view),
            )
                .into_response())
        }
        Message::Done(Ok(v)) => Ok(Json(v).into_response()),
        Message::Done(Err(e)) => Err(e),
    }
}

fn lock(tasks: &Tasks) -> std::sync::MutexGuard<'_, HashMap<i64, Task>> {
    tasks.lock().unwrap_or_else(|e| e.into_inner())
}

async fn view(state: &AppState, id: i64) -> Result<JobView, ApiError> {
    let tasks = state.tasks.clone();
    blocking(state, format!("reading job {id}"), move |store| {
        let task = lock(&tasks).get(&id).cloned();
        // A job begun in a transaction not yet committed (or rolled back)
        // is known here only.
        let job = match (jobs::find(store, id)?, &task) {
            (Some(job), _) => job,
            (None, Some(t)) => t.begun.clone(),
            (None, None) => return Err(crate::host::Error::NotFound(format!("no job {id}"))),
        };
        Ok(JobView::of(&job, task.as_ref()))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// How many of the newest jobs (default 50).
    limit: Option<u32>,
}

/// The newest jobs, oldest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = Vec<JobView>), (status = 401, body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let tasks = state.tasks.clone();
    let views = blocking(&state, "listing jobs".into(), move |store| {
        let all = jobs::recent(store, q.limit.unwrap_or(50))?;
        let tasks = lock(&tasks);
        Ok(all
            .iter()
            .map(|j| JobView::of(j, tasks.get(&j.id)))
            .collect())
    })
    .await?;
    Ok(Json(views))
}

/// One job: state, steps, progress, and its result or error.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(view(&state, id).await?))
}

/// Follows a job live: a `job` event (the job, as `GET /jobs/{id}` gives
/// it) at each change, the last one when it ends.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, description = "A text/event-stream of `job` events", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let first = view(&state, id).await?;
    let stream = futures_util::stream::unfold(
        (state, Some(first), None::<JobView>),
        move |(state, next, last)| async move {
            let current = match next {
                Some(v) => v,
                None => {
                    if last.as_ref().is_some_and(JobView::finished) {
                        return None;
                    }
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        match view(&state, id).await {
                            Ok(v) if Some(&v) != last.as_ref() => break v,
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                }
            };
            let event = Event::default()
                .event("job")
                .json_data(&current)
                .unwrap_or_else(|_| Event::default().event("job"));
            Some((Ok::<_, Infallible>(event), (state, None, Some(current))))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
