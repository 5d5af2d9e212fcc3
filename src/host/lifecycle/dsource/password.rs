//! Handing a dSource a changed source password: checked against the source
//! by the connector (which writes staging's passfile with it and starts
//! staging), then sealed into the store. A password the source refuses
//! changes nothing.

use rusqlite::params;
use serde_json::{json, Value};

use super::{get, owner, start_staging_checked, DSource, DsourceState};
use crate::abi::IngestionMethod;
use crate::host::connectors::loader::Connector;
use crate::host::error::{Error, Result};
use crate::host::store::Store;

/// Replaces the password of dSource `name`'s source user.
pub fn set_password(
    store: &Store,
    connector: &Connector,
    name: &str,
    password: &str,
) -> Result<DSource> {
    let d = get(store, name)?;
    let method = IngestionMethod::of(&d.parameters);
    let Some(pointer) = method.password_pointer() else {
        return Err(Error::usage(format!(
            "dSource {name} ({method}) connects to no source with a password"
        )));
    };
    if password.is_empty() {
        return Err(Error::usage("the new password is empty"));
    }
    let mut doc = d.unsealed_parameters(store)?;
    set_at(&mut doc, pointer, json!(password));
    connector
        .definitions
        .validate("linked_source", &doc, "linked-source parameters")?;
    let (public, sealed) = store.seal(
        &owner(name),
        &doc,
        &connector.definitions.secret_fields("linked_source"),
    )?;
    if d.state == DsourceState::Enabled {
        let mut changed = d.clone();
        changed.parameters = public.clone();
        changed.sealed = sealed.clone();
        start_staging_checked(store, connector, &changed, true)?;
    }
    store
        .conn()
        .execute(
            "UPDATE dsources SET parameters = ?2, sealed = ?3 WHERE id = ?1",
            params![d.id, public.to_string(), sealed],
        )
        .map_err(|e| store.err(e))?;
    get(store, name)
}

/// Sets `value` at a JSON Pointer, making the objects on the way.
fn set_at(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    let keys: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, key) in keys.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        let map = at.as_object_mut().expect("an object");
        if i + 1 == keys.len() {
            map.insert((*key).to_owned(), value);
            return;
        }
        at = map.entry((*key).to_owned()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_set_where_the_pointer_says_making_objects_on_the_way() {
        let mut doc = json!({"staging_port": 1});
        set_at(&mut doc, "/source/replication_password", json!("x"));
        assert_eq!(
            doc,
            json!({"staging_port": 1, "source": {"replication_password": "x"}})
        );
        set_at(&mut doc, "/source/replication_password", json!("y"));
        assert_eq!(doc["source"]["replication_password"], json!("y"));
    }
}
