//! Errors as JSON: what failed, why, and what to do, with the status code
//! that fits the engine's error kind (400 with the JSON path of each bad
//! field, 401, 403, 404, 409, 422, 500).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::host::Error;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What failed (the request, in words).
    pub what: String,
    /// Why: the engine's explanation.
    pub why: String,
    /// What to do about it.
    pub action: String,
    /// For a bad body: each bad field, at its JSON path in the request body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemBody>,
    /// For a conflict with a running job: that job's id (`GET /jobs/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
}

/// One bad field.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A JSON Pointer into the request body (`/parameters/source/port`).
    pub at: String,
    pub message: String,
}

/// An error response: a status and its body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, what: &str, why: impl Into<String>, action: &str) -> Self {
        Self {
            status,
            body: ErrorBody {
                what: what.to_owned(),
                why: why.into(),
                action: action.to_owned(),
                problems: Vec::new(),
                job: None,
            },
        }
    }

    pub fn bad_request(what: &str, problems: Vec<ProblemBody>) -> Self {
        let why = problems
            .iter()
            .map(|p| format!("{}: {}", p.at, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            what,
            why,
            "fix the fields named in `problems` and send the request again",
        );
        e.body.problems = problems;
        e
    }

    /// The engine's error, for a request described by `what`. Problems in a
    /// document the request carried at `body_at` (a JSON Pointer such as
    /// `/parameters`) are placed there.
    pub fn from_host(what: &str, error: Error, body_at: &str) -> Self {
        let why = error.to_string();
        match error {
            Error::Invalid { problems, .. } => Self::bad_request(
                what,
                problems
                    .into_iter()
                    .map(|p| ProblemBody {
                        at: match p.at.split_once('#') {
                            Some((_, pointer)) => format!("{body_at}{pointer}"),
                            None => p.at,
                        },
                        message: p.message,
                    })
                    .collect(),
            ),
            Error::Usage(_) => Self::new(
                StatusCode::BAD_REQUEST,
                what,
                why,
                "fix the request as `why` says and send it again",
            ),
            Error::NotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                what,
                why,
                "check the name or id (list the resource to see what exists)",
            ),
            Error::Conflict(message) => {
                let job = running_job(&message);
                let mut e = Self::new(
                    StatusCode::CONFLICT,
                    what,
                    message,
                    if job.is_some() {
                        "wait for the running job to finish (GET /jobs/{id}), then try again"
                    } else {
                        "resolve the conflict `why` names, then try again"
                    },
                );
                e.body.job = job;
                e
            }
            Error::Refused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                what,
                why,
                "change the object's state first, as `why` says",
            ),
            Error::Load { .. } | Error::Operation { .. } | Error::Process(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                what,
                why,
                "read `why` (the connector's or the command's own words); fix the cause and try again",
            ),
            Error::Io { .. } | Error::Store { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                what,
                why,
                "check the engine host (files, space, permissions) and try again",
            ),
        }
    }

    pub fn unauthorized(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authenticating the request",
            why,
            "send `Authorization: Bearer <token>` with a token from `pgvirt token create NAME`",
        )
    }

    pub fn forbidden(token: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "authorizing the request",
            format!("token {token:?} is read-only; it may only read (GET)"),
            "use a token made without --read-only to change things",
        )
    }

    pub fn internal(what: &str, why: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            what,
            why,
            "see the server's log; try again",
        )
    }
}

/// The job a busy-object conflict names ("... is busy: job 12 (process ...").
fn running_job(message: &str) -> Option<i64> {
    let (_, rest) = message.split_once("is busy: job ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Problem;

    #[test]
    fn kinds_map_to_statuses_and_paths_into_the_body() {
        let e = ApiError::from_host(
            "linking",
            Error::invalid(
                "linked-source parameters",
                vec![Problem {
                    at: "linked-source parameters#/source/port".into(),
                    message: "too low".into(),
                }],
            ),
            "/parameters",
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body.problems[0].at, "/parameters/source/port");
        let busy = ApiError::from_host(
            "x",
            Error::Conflict("VDB a is busy: job 42 (process 7) is running".into()),
            "",
        );
        assert_eq!(
            (busy.status, busy.body.job),
            (StatusCode::CONFLICT, Some(42))
        );
        let refused = ApiError::from_host("x", Error::Refused("no".into()), "");
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        let missing = ApiError::from_host("x", Error::NotFound("no".into()), "");
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }
}
