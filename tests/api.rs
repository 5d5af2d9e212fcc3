//! The HTTP API: a real `pgvirt serve` on a free port, real HTTP. Tokens
//! and error statuses; the OpenAPI document against the OpenAPI 3.1
//! schema and the router; a curl-only session that provisions and deletes
//! a VDB; a second change to a busy VDB (409), reads answered while a
//! provision runs, and a job cut short by a killed `serve`, repaired at
//! its restart.
//!
//! `tests/fixtures/openapi-3.1.schema.json` is the official OpenAPI 3.1
//! schema (`https://spec.openapis.org/oas/3.1/schema/2022-10-07`, Apache-2.0,
//! by the OpenAPI Initiative), vendored as it is: self-contained, so the
//! validator fetches nothing.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::http::{concurrent_reads, make_token, Api, Server};
use crate::support::{free_port, repo_root, Cluster, Pgvirt, PoolDir, Stack};

fn serve(p: &Pgvirt) -> Server {
    Server::start(p.command(&[]))
}

fn token(p: &Pgvirt, name: &str, read_only: bool) -> String {
    make_token(
        Path::new(env!("CARGO_BIN_EXE_pgvirt")),
        &p.store(),
        name,
        read_only,
    )
}

/// An error body: what, why and what to do.
fn assert_error(reply: &crate::support::http::Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let body = reply.json();
    for key in ["what", "why", "action"] {
        assert!(body[key].is_string(), "no {key} in {body}");
    }
    body
}

#[test]
fn tokens_guard_every_request_and_errors_are_json_with_their_status() {
    let p = Pgvirt::new();
    let rw = token(&p, "ci", false);
    let ro = token(&p, "viewer", true);
    // Only hashes are kept: the store holds neither token.
    let stored = std::fs::read(p.store()).expect("store");
    for t in [&rw, &ro] {
        assert!(
            !stored.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token is in the store"
        );
    }
    let listed = p.json(&["token", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(!listed.to_string().contains(&rw[4..]), "{listed}");
    assert!(p
        .fails(&["token", "create", "ci"])
        .contains("exists already"));

    let server = serve(&p);
    let none = Api {
        port: server.port,
        token: None,
    };
    let bad = Api {
        port: server.port,
        token: Some("pgv_0000".into()),
    };
    let api = Api {
        port: server.port,
        token: Some(rw.clone()),
    };
    let viewer = Api {
        port: server.port,
        token: Some(ro),
    };
    assert_error(&none.get("/vdbs"), 401);
    assert_error(&bad.get("/vdbs"), 401);
    assert_eq!(viewer.get("/vdbs").json(), json!([]));
    assert_error(
        &viewer.call("POST", "/vdbs", Some(&json!({"name": "a", "from": "b"}))),
        403,
    );

    // A malformed body: 400 naming the field by its JSON path.
    let e = assert_error(
        &api.call("POST", "/vdbs", Some(&json!({"name": 3, "from": "x"}))),
        400,
    );
    assert_eq!(e["problems"][0]["at"], "/name", "{e}");
    let raw =
        crate::support::http::request(server.port, "POST", "/vdbs", Some(&rw), Some(b"{not json"))
            .expect("request");
    assert_error(&raw, 400);
    let e = assert_error(
        &api.call("PUT", "/vdbs/x/quota", Some(&json!({"bytes": "lots"}))),
        400,
    );
    assert_eq!(e["problems"][0]["at"], "/bytes", "{e}");
    // Unknown things: 404.
    assert_error(&api.get("/vdbs/nothing"), 404);
    assert_error(&api.get("/jobs/424242"), 404);
    assert_error(&api.get("/no/such/route"), 404);

    // A secret in a body is never echoed back.
    let secret = "s3cret-never-shown";
    let reply = api.call(
        "POST",
        "/dsources",
        Some(&json!({"name": "d", "source_config": 999,
            "parameters": {"source": {"replication_password": secret}}})),
    );
    assert!(reply.status >= 400, "{}", reply.body);
    assert!(!reply.body.contains(secret), "{}", reply.body);

    // A revoked token is refused from then on.
    p.ok(&["token", "revoke", "ci"]);
    assert_error(&api.get("/vdbs"), 401);
}

#[test]
fn the_openapi_document_is_valid_openapi_3_1_and_matches_the_router() {
    let p = Pgvirt::new();
    let t = token(&p, "ci", false);
    let server = serve(&p);
    let api = Api {
        port: server.port,
        token: Some(t),
    };
    let doc = api.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/openapi-3.1.schema.json"))
            .expect("schema"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not valid OpenAPI 3.1:\n{}",
        errors.join("\n")
    );
    // The check can fail: a response without its description is caught.
    let mut broken = doc.clone();
    broken["paths"]["/vdbs"]["get"]["responses"]["200"] = json!({"content": {}});
    assert!(
        !validator.is_valid(&broken),
        "the OpenAPI schema check caught nothing"
    );

    // Every route the API promises is in the document...
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/connectors", "post"),
        ("/connectors/libraries/{sha256}", "put"),
        ("/environments", "post"),
        ("/environments/{name}/refresh", "post"),
        ("/repositories", "get"),
        ("/source-configs", "post"),
        ("/source-configs/{id}", "delete"),
        ("/dsources", "post"),
        ("/dsources/{name}/sync", "post"),
        ("/dsources/{name}", "delete"),
        ("/vdbs", "post"),
        ("/vdbs/{name}/refresh", "post"),
        ("/vdbs/{name}/rewind", "post"),
        ("/vdbs/{name}", "delete"),
        ("/snapshots", "get"),
        ("/timeflows/{name}", "get"),
        ("/pool", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/events", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    // ... and every route in the document is served: what answers is the
    // operation (its own 2xx/4xx JSON), never the router's "no such route"
    // or a 405.
    for (path, item) in paths {
        let concrete = path
            .replace("{sha256}", &"0".repeat(64))
            .replace("{id}", "424242")
            .replace("{name}", "nothing");
        for method in item.as_object().expect("path item").keys() {
            let reply = api.call(&method.to_uppercase(), &concrete, Some(&json!({})));
            assert_ne!(reply.status, 405, "{method} {path}: {}", reply.body);
            if reply.status == 404 {
                let body = reply.json();
                assert_ne!(
                    body["what"], "routing the request",
                    "{method} {path} is in the document but not routed"
                );
            }
            // Every declared response status is a number the document names.
            let declared = item[method]["responses"].as_object().expect("responses");
            assert!(
                declared.contains_key(&reply.status.to_string()) || reply.status == 401,
                "{method} {path} answered {} which the document does not declare: {}",
                reply.status,
                reply.body
            );
        }
    }
}

#[test]
fn a_curl_only_session_uploads_links_provisions_connects_and_deletes() {
    let p = Pgvirt::new();
    let source = Cluster::start();
    let pool = PoolDir::new();
    p.ok(&["init", "--pool", pool.pool().to_str().expect("utf-8")]);
    let dist = p.dir().join("dist");
    p.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        dist.to_str().expect("utf-8"),
    ]);
    let t = token(&p, "ci", false);
    let server = serve(&p);
    let data = std::fs::canonicalize(source.data_dir()).expect("canonical");
    let out = Command::new("bash")
        .arg(repo_root().join("tests/api_session.sh"))
        .env("PGVIRT_URL", server.url(""))
        .env("PGVIRT_TOKEN", &t)
        .env("CONNECTOR_DIR", &dist)
        .env("SOURCE_DATA_DIR", &data)
        .env("STAGING_PORT", free_port().to_string())
        .env(
            "PATH",
            format!(
                "{}:{}",
                crate::support::PG_BIN,
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the curl session failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("session done"));
    // The same connector again is a no-op; the CLI sees what the API did.
    let again = Api {
        port: server.port,
        token: Some(t),
    }
    .call(
        "POST",
        "/connectors",
        Some(
            &serde_json::from_str::<Value>(
                &std::fs::read_to_string(dist.join("connector.json")).expect("bundle"),
            )
            .expect("json"),
        ),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["previous_version"], "0.1.0+1");
    let dsources = p.json(&["dsource", "list"]);
    assert_eq!(dsources[0]["name"], "api-src", "{dsources}");
    p.ok(&["dsource", "delete", "api-src"]);
    crate::support::stop_clusters_under(&pool.pool());
}

#[test]
fn a_busy_vdb_refuses_a_second_change_reads_go_on_and_a_killed_serve_is_repaired() {
    let stack = Stack::new();
    stack.link("busy-src");
    let t = token(&stack.pgvirt, "ci", false);
    // Every clone pauses (60 s) after it is made: the provision stays running.
    let mut cmd = stack.pgvirt.command(&[]);
    cmd.env("PGVIRT_FAULT_PAUSE", "clone");
    let mut server = Server::start(cmd);
    let api = Api {
        port: server.port,
        token: Some(t.clone()),
    };
    let accepted = api.call(
        "POST",
        "/vdbs",
        Some(&json!({"name": "busy", "from": "busy-src"})),
    );
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert!(accepted
        .headers
        .to_ascii_lowercase()
        .contains("location: /jobs/"));
    let job = accepted.json();
    let id = job["id"].as_i64().expect("job id");
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["kind"], "provision", "{job}");

    // A second change to the same VDB: 409, naming the running job.
    let refused = assert_error(&api.call("DELETE", "/vdbs/busy", None), 409);
    assert_eq!(refused["job"], json!(id), "{refused}");
    let refused = assert_error(&api.call("POST", "/vdbs/busy/stop", None), 409);
    assert_eq!(refused["job"], json!(id), "{refused}");

    // The job, live: its events stream says it runs, at its step.
    let events = Command::new("curl")
        .args(["-sN", "--max-time", "2", "-H"])
        .arg(format!("Authorization: Bearer {t}"))
        .arg(server.url(&format!("/jobs/{id}/events")))
        .output()
        .expect("curl runs");
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("event: job"), "{events}");
    assert!(events.contains("\"state\":\"running\""), "{events}");
    let now = api.get(&format!("/jobs/{id}")).json();
    assert!(now["progress"].as_u64().expect("progress") < 100, "{now}");
    assert!(!now["steps"].as_array().expect("steps").is_empty(), "{now}");

    // Reads are all answered while it runs.
    let answers = concurrent_reads(
        server.port,
        &t,
        &["/vdbs", "/dsources", &format!("/jobs/{id}"), "/pool"],
        40,
    );
    assert_eq!(answers.len(), 40);
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");

    // A crash of serve mid-job; the next serve repairs it at start.
    server.kill();
    let server = serve(&stack.pgvirt);
    let api = Api {
        port: server.port,
        token: Some(t),
    };
    let after = api.get(&format!("/jobs/{id}")).json();
    assert_eq!(after["state"], "interrupted", "{after}");
    assert_error(&api.get("/vdbs/busy"), 404);
    stack.assert_whole("after serve was killed during a provision");

    // And the same request now runs to the end.
    let accepted = api.call(
        "POST",
        "/vdbs",
        Some(&json!({"name": "busy", "from": "busy-src"})),
    );
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let done = api.wait_job(accepted.json()["id"].as_i64().expect("id"));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["name"], "busy", "{done}");
    assert_eq!(done["progress"], 100, "{done}");
    assert_eq!(stack.vdb_sql("busy", "SELECT 1"), "1");
    let deleted = api.call("DELETE", "/vdbs/busy", None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    let done = api.wait_job(deleted.json()["id"].as_i64().expect("id"));
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[test]
fn a_connector_uploads_once_reinstalls_as_a_no_op_and_a_downgrade_is_refused() {
    let p = Pgvirt::new();
    let dist = p.dir().join("dist");
    p.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        dist.to_str().expect("utf-8"),
    ]);
    let t = token(&p, "ci", false);
    let server = serve(&p);
    let api = Api {
        port: server.port,
        token: Some(t.clone()),
    };
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(dist.join("connector.json")).expect("bundle"),
    )
    .expect("json");
    // Without its library first: refused, saying where to put it.
    let e = assert_error(&api.call("POST", "/connectors", Some(&bundle)), 422);
    let sha = bundle["library"]["sha256"].as_str().expect("sha");
    assert!(e["why"].as_str().expect("why").contains(sha), "{e}");
    // Bytes that are not the library: 400.
    let wrong = crate::support::http::request(
        server.port,
        "PUT",
        &format!("/connectors/libraries/{sha}"),
        Some(&t),
        Some(b"not a library"),
    )
    .expect("request");
    assert_error(&wrong, 400);
    let lib = std::fs::read(dist.join("libpgvirt.so")).expect("library");
    let put = crate::support::http::request(
        server.port,
        "PUT",
        &format!("/connectors/libraries/{sha}"),
        Some(&t),
        Some(&lib),
    )
    .expect("request");
    assert_eq!(put.status, 201, "{}", put.body);
    let first = api.call("POST", "/connectors", Some(&bundle));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["previous_version"], Value::Null);
    let again = api.call("POST", "/connectors", Some(&bundle));
    assert_eq!(
        again.json()["previous_version"],
        "0.1.0+1",
        "{}",
        again.body
    );
    assert_eq!(again.json()["unchanged"], true, "{}", again.body);
    // A malformed bundle names the field.
    let mut bad = bundle.clone();
    bad["manifest"]["version"] = json!(7);
    let e = assert_error(&api.call("POST", "/connectors", Some(&bad)), 400);
    assert!(
        !e["problems"].as_array().expect("problems").is_empty(),
        "{e}"
    );

    // Stand in for a newer release having been installed (9.0.0).
    let store = pgvirt::host::store::Store::open(&p.store()).expect("store");
    let manifest: String = store
        .conn()
        .query_row("SELECT manifest FROM connectors", [], |r| r.get(0))
        .expect("row");
    let mut manifest: Value = serde_json::from_str(&manifest).expect("json");
    manifest["version"] = json!("9.0.0");
    store
        .conn()
        .execute(
            "UPDATE connectors SET version = '9.0.0', manifest = ?1",
            [manifest.to_string()],
        )
        .expect("update");
    drop(store);
    let e = assert_error(&api.call("POST", "/connectors", Some(&bundle)), 409);
    let why = e["why"].as_str().expect("why");
    assert!(why.contains("0.1.0") && why.contains("9.0.0"), "{e}");
    assert_eq!(api.get("/connectors").json()[0]["version"], "9.0.0");
}

#[test]
fn serve_speaks_tls_with_a_certificate_and_key() {
    let p = Pgvirt::new();
    let t = token(&p, "ci", true);
    let (cert, key) = (p.dir().join("cert.pem"), p.dir().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut cmd = p.command(&["serve", "--listen", "127.0.0.1:0", "--tls-cert"]);
    cmd.arg(&cert).arg("--tls-key").arg(&key);
    let server = Server::start_with(cmd);
    let url = format!("https://127.0.0.1:{}/vdbs", server.port);
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args([
            "-H",
            &format!("Authorization: Bearer {t}"),
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("200") && text.starts_with("[]"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP is not answered as HTTP there.
    let plain = crate::support::http::request(server.port, "GET", "/vdbs", Some(&t), None);
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain HTTP was served"
    );
}

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
