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

mod resources;

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
fn a_connector_uploads_as_one_file_reinstalls_as_a_no_op_upgrades_and_refuses_a_downgrade() {
    let p = Pgvirt::new();
    let dist = p.dir().join("dist");
    p.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        dist.to_str().expect("utf-8"),
    ]);
    // One file: nothing else was written beside it.
    let written: Vec<_> = std::fs::read_dir(&dist).expect("dist").flatten().collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let t = token(&p, "ci", false);
    let server = serve(&p);
    let api = Api {
        port: server.port,
        token: Some(t.clone()),
    };
    let read = |path: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("bundle")).expect("json")
    };
    let bundle = read(&dist.join("connector.json"));
    // A library that is not the one whose sha256 the bundle records: 400,
    // naming the field; nothing installed.
    let mut tampered = bundle.clone();
    tampered["library"]["base64"] = json!("bm90IGEgbGlicmFyeQ==");
    let e = assert_error(&api.call("POST", "/connectors", Some(&tampered)), 400);
    assert!(e.to_string().contains("/library/sha256"), "{e}");
    assert_eq!(api.get("/connectors").json(), json!([]));
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

    // The 0.2.0 build upgrades (no stored documents to migrate here).
    let newer = read(&crate::support::fixture::connector_0_2_0());
    let up = api.call("POST", "/connectors", Some(&newer));
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.json()["previous_version"], "0.1.0+1", "{}", up.body);
    assert_eq!(up.json()["installed"]["version"], "0.2.0", "{}", up.body);
    // 0.1.0 again: 409, naming both versions.
    let e = assert_error(&api.call("POST", "/connectors", Some(&bundle)), 409);
    let why = e["why"].as_str().expect("why");
    assert!(why.contains("0.1.0") && why.contains("0.2.0"), "{e}");
    assert_eq!(api.get("/connectors").json()[0]["version"], "0.2.0");
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
