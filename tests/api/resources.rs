//! The resources beyond the main story: exports, retention, a changed
//! source password and empty VDBs,
//! each as its command does.

use serde_json::json;

use super::{assert_error, serve, token};
use crate::support::http::Api;
use crate::support::Stack;

#[test]
fn exports_retention_and_empty_vdbs_are_there_as_on_the_command_line() {
    let stack = Stack::new();
    stack.source.psql(
        "postgres",
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g;",
    );
    stack.link("src");
    stack.pgvirt.ok(&["dsource", "sync", "src"]);
    stack.pgvirt.ok(&["dsource", "sync", "src"]);
    let t = token(&stack.pgvirt, "ops", false);
    let server = serve(&stack.pgvirt);
    let api = Api {
        port: server.port,
        token: Some(t),
    };
    let finish = |reply: crate::support::http::Reply| {
        assert_eq!(reply.status, 202, "{}", reply.body);
        let done = api.wait_job(reply.json()["id"].as_i64().expect("id"));
        assert_eq!(done["state"], "succeeded", "{done}");
        done
    };

    // Retention: bad bodies named, then applied at once.
    let err = assert_error(
        &api.call("PUT", "/dsources/src/retention", Some(&json!({}))),
        400,
    );
    assert!(
        err["what"]
            .as_str()
            .unwrap_or_default()
            .contains("retention"),
        "{err}"
    );
    assert_error(
        &api.call(
            "PUT",
            "/dsources/src/retention",
            Some(&json!({"keep": "two"})),
        ),
        400,
    );
    assert_error(
        &api.call("PUT", "/vdbs/nosuch/retention", Some(&json!({"keep": 1}))),
        404,
    );
    let applied = api.call("PUT", "/dsources/src/retention", Some(&json!({"keep": 1})));
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!(
        applied.json()["removed"].as_array().expect("removed").len(),
        2,
        "{}",
        applied.body
    );
    let left = api.get("/snapshots?dsource=src").json();
    assert_eq!(left.as_array().expect("snapshots").len(), 1, "{left}");

    // A changed source password: sealed, shown nowhere, staging still runs.
    assert_error(
        &api.call(
            "PUT",
            "/dsources/nosuch/password",
            Some(&json!({"password": "p"})),
        ),
        404,
    );
    assert_error(
        &api.call("PUT", "/dsources/src/password", Some(&json!({"pass": "p"}))),
        400,
    );
    let changed = api.call(
        "PUT",
        "/dsources/src/password",
        Some(&json!({"password": "Api-Secret-77"})),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(!changed.body.contains("Api-Secret-77"), "{}", changed.body);
    let shown = api.get("/dsources/src");
    assert!(!shown.body.contains("Api-Secret-77"), "{}", shown.body);
    assert_eq!(
        shown.json()["dsource"]["parameters"]["source"]["replication_password"],
        "********",
        "{}",
        shown.body
    );
    assert_eq!(shown.json()["status"], "ACTIVE", "{}", shown.body);

    // An empty VDB, and a VDB of the source to export into.
    finish(api.call("POST", "/empty-vdbs", Some(&json!({"name": "blank"}))));
    assert_eq!(api.get("/vdbs/blank").json()["parent_kind"], "empty");
    finish(api.call(
        "POST",
        "/vdbs",
        Some(&json!({"name": "tgt", "from": "src"})),
    ));

    // An export: defined, reviewed, installed, run, its status, removed.
    let bad = api.call(
        "POST",
        "/exports",
        Some(&json!({"name": "e", "source": stack.source_id, "tables": ["public.items"]})),
    );
    assert_error(&bad, 400);
    let added = api.call(
        "POST",
        "/exports",
        Some(&json!({"name": "e", "source": stack.source_id,
            "tables": ["public.items"], "targets": ["tgt"]})),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    assert_error(
        &api.call(
            "POST",
            "/exports",
            Some(&json!({"name": "e", "source": stack.source_id,
                "tables": ["public.items"], "targets": ["tgt"]})),
        ),
        409,
    );
    let ddl = api.get("/exports/e/ddl").json();
    assert!(
        ddl["sql"].as_str().expect("sql").contains("CREATE TRIGGER"),
        "{ddl}"
    );
    let installed = api.call("POST", "/exports/e/install", None);
    assert_eq!(installed.status, 200, "{}", installed.body);
    stack.source.psql(
        "postgres",
        "INSERT INTO items SELECT g, 'new' FROM generate_series(51, 80) g; DELETE FROM items WHERE id <= 5;",
    );
    let run = api.call("POST", "/exports/e/run", None);
    assert_eq!(run.status, 200, "{}", run.body);
    assert_eq!(
        stack.vdb_sql("tgt", &crate::support::checksum_sql("items")),
        stack
            .source
            .psql("postgres", &crate::support::checksum_sql("items"))
    );
    let status = api.get("/exports/e/status").json();
    assert_eq!(status[0]["changes_waiting"], 0, "{status}");
    assert_eq!(api.get("/exports").json()[0]["name"], "e");
    let removed = api.call("DELETE", "/exports/e", None);
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_error(&api.get("/exports/e"), 404);
}
