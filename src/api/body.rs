//! Request bodies: JSON read with the path of whatever is wrong in it, so a
//! malformed body gets a 400 that names the field (`/quota`), as the
//! engine's own validation does for documents.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ProblemBody};

/// A JSON request body of type `T`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("reading the request body", vec![problem("", e)]))?;
        parse(&bytes).map(Body)
    }
}

/// Reads `bytes` as a `T`, naming the JSON path of the first problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = pointer(e.path());
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not JSON: {inner}")
        } else {
            inner.to_string()
        };
        ApiError::bad_request(
            "reading the request body",
            vec![ProblemBody { at, message }],
        )
    })
}

fn problem(at: &str, e: impl std::fmt::Display) -> ProblemBody {
    ProblemBody {
        at: at.to_owned(),
        message: e.to_string(),
    }
}

/// A serde path as a JSON Pointer (`/source/port`, `/set/0`).
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => out.push_str(variant),
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        name: String,
        quota: Option<u64>,
    }

    #[test]
    fn a_bad_field_is_named_by_its_path() {
        let e = parse::<Req>(br#"{"name": "a", "quota": "lots"}"#).expect_err("bad");
        assert_eq!(e.body.problems[0].at, "/quota");
        let e = parse::<Req>(b"{not json").expect_err("bad");
        assert!(
            e.body.problems[0].message.contains("not JSON"),
            "{:?}",
            e.body
        );
        assert!(parse::<Req>(br#"{"name": "a"}"#).is_ok());
    }
}
