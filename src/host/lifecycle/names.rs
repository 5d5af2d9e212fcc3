//! One name space for dSources and VDBs: `--from NAME` must mean one thing.
//! (The store refuses a clash too, by trigger; this says it in words.)

use crate::host::environments::check_name;
use crate::host::error::{Error, Result};
use crate::host::store::Store;

/// Checks `name` is well formed and no dSource or VDB has it.
pub fn check_free(store: &Store, name: &str, what: &str) -> Result<()> {
    check_name(name, what)?;
    let taken: Option<String> = store.optional(store.conn().query_row(
        "SELECT 'dSource' FROM dsources WHERE name = ?1 UNION ALL SELECT 'VDB' FROM vdbs WHERE name = ?1",
        [name],
        |r| r.get(0),
    ))?;
    match taken {
        Some(kind) => Err(Error::Conflict(format!(
            "a {kind} named {name:?} exists already (dSources and VDBs share one name space); choose another name"
        ))),
        None => Ok(()),
    }
}
