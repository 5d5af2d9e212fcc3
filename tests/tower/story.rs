//! The story: two engines (alpha over HTTP, beta over HTTPS) and a tower,
//! by CLI, API and browser.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    certificate, engine_of, error_body, has, ok, secret_file, tower, wait_inventory, wait_job, BIN,
};
use crate::support::browser::Browser;
use crate::support::http::{make_token, Api, Server};
use crate::support::{as_pg_user, repo_root, Stack, PG_BIN};

#[test]
fn a_tower_over_two_engines_in_a_real_browser() {
    // Screenshots are always taken (each a PNG); they go to
    // docs/screenshots/ when PGVIRT_SCREENSHOTS=1 (to refresh the README's).
    let scratch = tempfile::tempdir().expect("tempdir");
    let shots = match std::env::var("PGVIRT_SCREENSHOTS").as_deref() {
        Ok("1") => repo_root().join("docs/screenshots"),
        _ => scratch.path().to_owned(),
    };
    let alpha = Stack::new();
    alpha.link("sales");
    let beta = Stack::new();
    beta.link("billing");
    let dir = tempfile::tempdir().expect("tempdir");
    // alpha over HTTP, beta over HTTPS (a certificate of its own CA).
    let (ca, cert, key) = certificate(dir.path());
    let engine_a = Server::start(alpha.pgvirt.command(&[]));
    let mut serve_b = beta
        .pgvirt
        .command(&["serve", "--listen", "127.0.0.1:0", "--tls-cert"]);
    serve_b.arg(&cert).arg("--tls-key").arg(&key);
    let mut engine_b = Server::start_with(serve_b);
    let url_b = format!("https://127.0.0.1:{}", engine_b.port);
    let ta = make_token(Path::new(BIN), &alpha.pgvirt.store(), "tower", false);
    let tb = make_token(Path::new(BIN), &beta.pgvirt.store(), "tower", false);
    let (fa, fb) = (
        secret_file(dir.path(), "alpha.token", &ta),
        secret_file(dir.path(), "beta.token", &tb),
    );
    let store = dir.path().join("tower.db");

    // Registered by URL and token, each checked on add.
    let bad = secret_file(dir.path(), "bad.token", "pgv_not-a-token");
    let out = tower(
        &store,
        &[
            "engine",
            "add",
            "alpha",
            "--url",
            &engine_a.url(""),
            "--token-file",
        ],
    )
    .arg(&bad)
    .output()
    .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("401"), "{said}");
    ok(tower(
        &store,
        &[
            "engine",
            "add",
            "alpha",
            "--url",
            &engine_a.url(""),
            "--token-file",
        ],
    )
    .arg(&fa));
    // Its certificate is not one the system's CAs sign: refused without its CA.
    let out = tower(
        &store,
        &["engine", "add", "beta", "--url", &url_b, "--token-file"],
    )
    .arg(&fb)
    .output()
    .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("TLS"), "{said}");
    ok(tower(
        &store,
        &["engine", "add", "beta", "--url", &url_b, "--token-file"],
    )
    .arg(&fb)
    .arg("--ca-file")
    .arg(&ca));
    let listed = ok(&mut tower(&store, &["engine", "list", "--output", "json"]));
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        !listed.to_string().contains(&ta[4..]),
        "an engine token is shown: {listed}"
    );
    // The engines' tokens are sealed at rest: in no file of the tower's.
    for file in std::fs::read_dir(dir.path()).expect("dir").flatten() {
        let path = file.path();
        if path.is_file() && !path.to_string_lossy().ends_with(".token") {
            let bytes = std::fs::read(&path).expect("read");
            for t in [&ta, &tb] {
                assert!(
                    !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                    "a token is in {}",
                    path.display()
                );
            }
        }
    }
    let meta = std::fs::metadata(&store).expect("store");
    assert_eq!(
        meta.permissions().mode() & 0o077,
        0,
        "the tower store is readable by others"
    );
    let ui_token = ok(&mut tower(&store, &["token", "create", "ui"]));
    let serve = tower(&store, &["serve", "--listen", "127.0.0.1:0", "--poll", "1"]);
    let mut tower_server = Server::start_with(serve);
    let api = Api {
        port: tower_server.port,
        token: Some(ui_token.clone()),
    };
    let stranger = Api {
        port: tower_server.port,
        token: Some("pgt_unknown".into()),
    };
    error_body(&stranger.get("/api/inventory"), 401);
    // By API too: checked on add (a wrong token refused, naming why), and removed.
    let body = json!({"name": "again", "url": engine_a.url(""), "token": "pgv_wrong"});
    let e = error_body(&api.call("POST", "/api/engines", Some(&body)), 422);
    assert!(e["why"].as_str().expect("why").contains("401"), "{e}");
    assert!(
        !e.to_string().contains("pgv_wrong"),
        "the token is echoed: {e}"
    );
    let body = json!({"name": "again", "url": engine_a.url(""), "token": ta});
    let added = api.call("POST", "/api/engines", Some(&body));
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.json()["health"], "up", "{}", added.body);
    error_body(&api.call("POST", "/api/engines", Some(&body)), 409);
    assert_eq!(api.call("DELETE", "/api/engines/again", None).status, 200);
    error_body(&api.call("DELETE", "/api/engines/again", None), 404);

    // Both engines' objects, each with its engine.
    let inv = wait_inventory(&api, "both dSources with snapshots", |inv| {
        has(inv, "dsources", "alpha", "sales")
            && has(inv, "dsources", "beta", "billing")
            && inv["snapshots"].as_array().is_some_and(|a| a.len() >= 2)
    });
    assert_eq!(engine_of(&inv, "alpha")["health"], "up", "{inv}");
    assert!(
        inv["timeflows"]["alpha"]["sales"]["timeflows"].is_array(),
        "{inv}"
    );
    assert!(has(&inv, "environments", "beta", "local"), "{inv}");

    // The seed's limit, with the engine's own error: a source config in
    // use by a dSource cannot be deleted.
    let path = format!("/source-configs/{}", alpha.source_id);
    let direct = Api {
        port: engine_a.port,
        token: Some(ta.clone()),
    }
    .call("DELETE", &path, None);
    let through = api.call("DELETE", &format!("/api/engines/alpha/proxy{path}"), None);
    assert!(direct.status >= 400, "{}", direct.body);
    assert_eq!(
        (through.status, through.json()),
        (direct.status, direct.json())
    );

    let bundle = upload_and_install(&api, &alpha);

    // A second snapshot of sales, by a job routed to its engine: the
    // timeline has two points and the range between them.
    alpha.source.psql(
        "postgres",
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    let synced = wait_job(&api, &api.call("POST", "/api/dsources/sales/sync", None));
    assert_eq!(
        (synced["state"].clone(), synced["engine"].clone()),
        (json!("succeeded"), json!("alpha")),
        "{synced}"
    );
    // The job's events, followed through the tower (the engine's stream).
    let events = Command::new("curl")
        .args(["-sN", "--max-time", "5", "-H"])
        .arg(format!("Authorization: Bearer {ui_token}"))
        .arg(tower_server.url(&format!("/api/jobs/alpha/{}/events", synced["id"])))
        .output()
        .expect("curl runs");
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("event: job") && events.contains("\"state\":\"succeeded\""),
        "{events}"
    );
    wait_inventory(&api, "the second snapshot", |inv| {
        inv["snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|s| s["engine"] == "alpha").count() == 2)
    });

    // ---- the browser story
    let browser = Browser::start();
    browser.goto(&tower_server.url("/"));
    browser.wait_for("#token", Duration::from_secs(10));
    browser.screenshot(&shots.join("login.png"));
    browser.type_in("#token", "pgt_wrong");
    browser.click("#login");
    browser.wait_for("#login-error", Duration::from_secs(10));
    browser.exec("document.querySelector('#token').value = '';", json!([]));
    browser.type_in("#token", &ui_token);
    browser.click("#login");
    browser.wait_for("#engine-alpha[data-health=up]", Duration::from_secs(10));
    browser.wait_for("#engine-beta[data-health=up]", Duration::from_secs(10));
    browser.screenshot(&shots.join("engines.png"));
    // The seed's limit in the UI: the engine's own words.
    browser.goto(&tower_server.url("/#/environments"));
    browser.click(&format!(
        "#config-alpha-{} button.delete-config",
        alpha.source_id
    ));
    browser.wait_for("#config-error", Duration::from_secs(10));
    let why = direct.json()["why"].as_str().expect("why").to_owned();
    assert!(
        browser.text("#config-error").contains(&why),
        "{}",
        browser.text("#config-error")
    );

    browser.goto(&tower_server.url("/#/dsources"));
    let dot = "#dsource-alpha-sales circle.snapshot";
    browser.wait_for(dot, Duration::from_secs(10));
    browser.wait_for(
        "#dsource-beta-billing circle.snapshot",
        Duration::from_secs(10),
    );
    browser.click(dot);
    browser.type_in("#vdb-name", "ui-vdb");
    browser.screenshot(&shots.join("provision.png"));
    browser.click("#provision-submit");
    browser.wait_for("#job", Duration::from_secs(10));
    browser.wait_until(
        "document.querySelector('#job').dataset.state !== undefined",
        Duration::from_secs(10),
    );
    // Live: the job panel follows the job to its end, then the VDB's page.
    browser.wait_until(
        "document.querySelector('#job').dataset.state === 'succeeded'",
        Duration::from_secs(300),
    );
    browser.wait_for("#connection", Duration::from_secs(20));
    assert!(
        browser.text("#job-state").contains("100%"),
        "{}",
        browser.text("#job")
    );
    browser.screenshot(&shots.join("vdb.png"));

    // Its buttons: stop, start, snapshot, rewind to that snapshot; each a
    // job of its engine, followed live to its end.
    for button in [
        "#action-stop",
        "#action-start",
        "#action-snapshot",
        "#action-rewind",
    ] {
        let before = browser.exec(
            "return document.querySelector('#job').dataset.job;",
            json!([]),
        );
        browser.click(button);
        browser.wait_until(
            &format!(
                "document.querySelector('#job').dataset.job !== {before} && document.querySelector('#job').dataset.state === 'succeeded'"
            ),
            Duration::from_secs(120),
        );
        if button == "#action-snapshot" {
            browser.wait_until(
                "document.querySelector('#rewind-to option[value]')",
                Duration::from_secs(20),
            );
        }
    }
    browser.wait_for("#connection", Duration::from_secs(20));
    // Copy the connection string (the page's own button), read the
    // clipboard back, connect with it.
    browser.grant("clipboard-read");
    browser.grant("clipboard-write");
    browser.click("#copy");
    browser.wait_until(
        "document.querySelector('#copied').textContent === 'copied'",
        Duration::from_secs(5),
    );
    let copied = browser.exec_async(
        "const done = arguments[arguments.length - 1]; navigator.clipboard.readText().then(done, e => done('ERROR ' + e));",
    );
    let copied = copied.as_str().expect("clipboard text").to_owned();
    assert_eq!(copied, browser.text("#connection"));
    assert!(copied.starts_with("postgresql://"), "{copied}");
    let answer = as_pg_user(Path::new(PG_BIN).join("psql"))
        .args(["-X", "-A", "-t", "-d", &copied, "-c", "SELECT 40 + 2"])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&answer.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );

    // The timeline shows the VDB branching off its snapshot.
    wait_inventory(&api, "the new VDB", |inv| {
        has(inv, "vdbs", "alpha", "ui-vdb")
    });
    browser.goto(&tower_server.url("/#/dsources"));
    browser.wait_for(
        "#dsource-alpha-sales text.vdb-label[data-vdb=ui-vdb]",
        Duration::from_secs(10),
    );
    browser.screenshot(&shots.join("timeline.png"));
    browser.click("#dsource-alpha-sales text.vdb-label[data-vdb=ui-vdb]");
    browser.wait_for("#action-delete", Duration::from_secs(10));
    browser.click("#action-delete");
    browser.click("#action-delete-confirm");
    browser.wait_until("location.hash === '#/vdbs'", Duration::from_secs(120));
    // Gone, as its engine says (its error passed on as it is).
    error_body(&api.get("/api/vdbs/ui-vdb?engine=alpha"), 404);

    browser.goto(&tower_server.url("/#/connectors"));
    browser.wait_for("#installed", Duration::from_secs(10));
    browser.screenshot(&shots.join("connectors.png"));
    let engines = [(engine_a.url(""), &ta), (url_b.clone(), &tb)];
    engine_refuses(&api, &bundle, &beta.pgvirt.store(), &engines, &ca);
    refuse_downgrade(&api, &store, &bundle, &engines, &ca);

    // ---- one engine stopped
    engine_b.kill();
    let inv = wait_inventory(&api, "beta down", |inv| {
        engine_of(inv, "beta")["health"] == "down"
    });
    assert!(
        engine_of(&inv, "beta")["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{inv}"
    );
    let billing = inv["dsources"]
        .as_array()
        .expect("dsources")
        .iter()
        .find(|d| d["name"] == "billing")
        .expect("billing still listed")
        .clone();
    assert_eq!(
        (billing["engine"].clone(), billing["stale"].clone()),
        (json!("beta"), json!(true)),
        "{billing}"
    );
    let refused = error_body(&api.call("POST", "/api/dsources/billing/sync", None), 503);
    assert!(
        refused["why"]
            .as_str()
            .expect("why")
            .contains("engine beta is down"),
        "{refused}"
    );
    browser.goto(&tower_server.url("/#/engines"));
    browser.wait_for("#engine-beta[data-health=down]", Duration::from_secs(10));
    browser.wait_for("#engine-alpha[data-health=up]", Duration::from_secs(10));
    browser.screenshot(&shots.join("engine-down.png"));
    browser.goto(&tower_server.url("/#/dsources"));
    browser.wait_for(
        "#dsource-beta-billing .badge.stale",
        Duration::from_secs(10),
    );
    browser.wait_for(
        "#dsource-beta-billing circle.snapshot",
        Duration::from_secs(10),
    );
    drop(browser);
    // The other engine keeps working: a provision and a delete, by API.
    // The tower killed (SIGKILL) while the provision runs, and started
    // again: the job is the engine's, followed as before; what a cut-short
    // upload left is cleaned at start.
    let accepted = api.call(
        "POST",
        "/api/vdbs",
        Some(&json!({"name": "api-vdb", "from": "sales"})),
    );
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    tower_server.kill();
    let leftover = dir.path().join("tower.d/incoming/cut-short");
    std::fs::create_dir_all(&leftover).expect("leftover");
    let tower_server = Server::start_with(tower(
        &store,
        &["serve", "--listen", "127.0.0.1:0", "--poll", "1"],
    ));
    assert!(!leftover.exists(), "an upload's leftover stayed");
    let api = Api {
        port: tower_server.port,
        token: Some(ui_token.clone()),
    };
    let done = wait_job(&api, &accepted);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(alpha.vdb_sql("api-vdb", "SELECT 1"), "1");
    // A refused operation passes the engine's status and body on.
    let busy = api.call(
        "POST",
        "/api/vdbs",
        Some(&json!({"name": "api-vdb", "from": "sales"})),
    );
    assert!(busy.status == 409 || busy.status == 400, "{}", busy.body);
    let done = wait_job(&api, &api.call("DELETE", "/api/vdbs/api-vdb", None));
    assert_eq!(done["state"], "succeeded", "{done}");
    // An engine that no longer takes the tower's token: a 502 naming it
    // (the caller's own token is fine), and shown down with why.
    alpha.pgvirt.ok(&["token", "revoke", "tower"]);
    let e = error_body(&api.get("/api/vdbs/anything?engine=alpha"), 502);
    assert!(
        e["why"]
            .as_str()
            .expect("why")
            .contains("refused the tower's token"),
        "{e}"
    );
    let inv = wait_inventory(&api, "alpha down", |inv| {
        engine_of(inv, "alpha")["health"] == "down"
    });
    assert!(
        engine_of(&inv, "alpha")["error"]
            .as_str()
            .is_some_and(|w| w.contains("401")),
        "{inv}"
    );
}

/// Upload once, install on both engines (the same version: unchanged).
fn upload_and_install(api: &Api, alpha: &Stack) -> Value {
    let dist = alpha.pgvirt.dir().join("dist");
    alpha.pgvirt.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        dist.to_str().expect("utf-8"),
    ]);
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(dist.join("connector.json")).expect("bundle"),
    )
    .expect("json");
    // Without its library inside: refused, naming the field.
    let mut bare = bundle.clone();
    bare["library"]
        .as_object_mut()
        .expect("library")
        .remove("base64");
    let e = error_body(&api.call("POST", "/api/connectors", Some(&bare)), 400);
    assert!(e["why"].as_str().expect("why").contains("library"), "{e}");
    let up = api.call("POST", "/api/connectors?install=all", Some(&bundle));
    assert_eq!(up.status, 200, "{}", up.body);
    let report = up.json();
    let installs = report["installs"].as_array().expect("per engine");
    assert_eq!(installs.len(), 2, "{report}");
    for i in installs {
        assert_eq!(i["status"], 200, "{report}");
        assert_eq!(i["installed"]["unchanged"], true, "{report}");
    }
    bundle
}

/// What each engine has installed, asked directly (curl).
fn installed(engines: &[(String, &String)], ca: &Path) -> Vec<String> {
    engines
        .iter()
        .map(|(url, token)| {
            let out = Command::new("curl")
                .args(["-sSf", "--cacert"])
                .arg(ca)
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("{url}/connectors"))
                .output()
                .expect("curl runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

/// An engine that refuses an install (it has a newer version) keeps its
/// version, and the tower's report says why; the other engine installs.
fn engine_refuses(
    api: &Api,
    bundle: &Value,
    beta_store: &Path,
    engines: &[(String, &String)],
    ca: &Path,
) {
    // Stand in for a newer release installed on beta alone (9.0.0).
    let conn = rusqlite::Connection::open(beta_store).expect("beta's store");
    conn.execute(
        "UPDATE connectors SET version = '9.0.0', manifest = json_set(manifest, '$.version', '9.0.0')",
        [],
    )
    .expect("update");
    drop(conn);
    let version = api.get("/api/connectors").json()["kept"][0]["version"]
        .as_str()
        .expect("kept version")
        .to_owned();
    let id = bundle["manifest"]["id"].as_str().expect("id");
    let reply = api.call(
        "POST",
        &format!("/api/connectors/{id}/{version}/install"),
        Some(&json!({"engines": ["alpha", "beta"]})),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = reply.json();
    assert_eq!(report[0]["engine"], "alpha", "{report}");
    assert_eq!(report[0]["status"], 200, "{report}");
    assert_eq!(report[1]["engine"], "beta", "{report}");
    assert_eq!(report[1]["status"], 409, "{report}");
    let why = report[1]["error"]["why"].as_str().expect("why");
    assert!(why.contains("9.0.0") && why.contains("0.1.0"), "{report}");
    let now = installed(engines, ca);
    assert!(now[1].contains("\"9.0.0\""), "beta changed: {}", now[1]);
}

/// A lower version than the tower has is refused naming both, and no
/// engine changes.
fn refuse_downgrade(
    api: &Api,
    store: &Path,
    bundle: &Value,
    engines: &[(String, &String)],
    ca: &Path,
) {
    let installed = || installed(engines, ca);
    let mut bad = bundle.clone();
    bad["manifest"]["version"] = json!(7);
    let e = error_body(&api.call("POST", "/api/connectors", Some(&bad)), 400);
    assert!(
        !e["problems"].as_array().expect("problems").is_empty(),
        "{e}"
    );

    // Stand in for a newer release uploaded before (9.0.0).
    let before = installed();
    let conn = rusqlite::Connection::open(store).expect("tower store");
    conn.execute(
        "UPDATE tower_connectors SET version = '9.0.0+1', bundle = json_set(bundle, '$.manifest.version', '9.0.0')",
        [],
    )
    .expect("update");
    drop(conn);
    let e = error_body(
        &api.call("POST", "/api/connectors?install=all", Some(bundle)),
        409,
    );
    let why = e["why"].as_str().expect("why");
    assert!(why.contains("0.1.0") && why.contains("9.0.0"), "{e}");
    let after = installed();
    assert_eq!(before, after, "an engine changed");
    let listed = api.get("/api/connectors").json();
    assert_eq!(listed["kept"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        listed["installed"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}
