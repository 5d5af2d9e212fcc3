//! Discovery through the loaded connector: installations and clusters on the
//! local environment, merged by identity across refreshes.

use serde_json::{json, Value};

use crate::support::{Cluster, Pgvirt, PG_BIN};

fn config_for<'a>(refresh: &'a Value, data_dir: &str) -> Option<&'a Value> {
    refresh["source_configs"]
        .as_array()
        .expect("source configs")
        .iter()
        .find(|s| s["document"]["data_directory"] == json!(data_dir))
}

#[test]
fn refresh_finds_postgres_15_and_a_running_cluster_without_duplicates() {
    let cluster = Cluster::start();
    let p = Pgvirt::with_local_env();
    let data_dir = std::fs::canonicalize(cluster.data_dir()).expect("canonical");
    let data_dir = data_dir.to_str().expect("utf-8");

    let first = p.json(&["env", "refresh", "local"]);
    let repos = first["repositories"].as_array().expect("repositories");
    let pg15 = repos
        .iter()
        .find(|r| r["document"]["bin_dir"] == json!(PG_BIN))
        .unwrap_or_else(|| panic!("no repository for {PG_BIN}: {first}"));
    assert_eq!(pg15["document"]["major_version"], json!(15));
    assert!(pg15["document"]["version"]
        .as_str()
        .expect("version")
        .starts_with("15."));
    let mut bin_dirs: Vec<&str> = repos
        .iter()
        .map(|r| r["document"]["bin_dir"].as_str().expect("bin"))
        .collect();
    let n = bin_dirs.len();
    bin_dirs.dedup();
    assert_eq!(
        n,
        bin_dirs.len(),
        "one repository per installation, even when linked from PATH"
    );

    let config = config_for(&first, data_dir)
        .unwrap_or_else(|| panic!("cluster {data_dir} not discovered: {first}"));
    assert_eq!(config["document"]["port"], json!(cluster.port));
    assert_eq!(config["document"]["running"], json!(true));
    assert_eq!(config["state"], json!("present"));
    assert_eq!(config["repository_id"], pg15["id"]);

    let second = p.json(&["env", "refresh", "local"]);
    assert_eq!(
        second["summary"]["repositories_added"],
        json!(0),
        "{second}"
    );
    assert_eq!(
        second["repositories"].as_array().expect("repos").len(),
        repos.len()
    );
    // Other tests start and stop clusters meanwhile (regression: this once
    // compared totals and failed when a parallel test's cluster appeared):
    // check instead that no cluster is listed twice.
    let mut dirs: Vec<&str> = second["source_configs"]
        .as_array()
        .expect("configs")
        .iter()
        .map(|c| c["document"]["data_directory"].as_str().expect("dir"))
        .collect();
    let n = dirs.len();
    dirs.sort_unstable();
    dirs.dedup();
    assert_eq!(n, dirs.len(), "no duplicates: {second}");
    assert_eq!(
        config_for(&second, data_dir).expect("still there")["id"],
        config["id"],
        "keeps its id"
    );

    // Listing agrees with the refresh.
    let listed = p.json(&["source", "list", "--env", "local"]);
    assert_eq!(listed, second["source_configs"]);
}

#[test]
fn a_vanished_cluster_is_marked_missing_and_comes_back_with_its_id() {
    let cluster = Cluster::start();
    let p = Pgvirt::with_local_env();
    let data_dir = std::fs::canonicalize(cluster.data_dir()).expect("canonical");
    let data_dir = data_dir.to_str().expect("utf-8");
    let before = p.json(&["env", "refresh", "local"]);
    let id = config_for(&before, data_dir).expect("discovered")["id"].clone();

    // Stopped outside the usual data-directory places: discovery cannot see it.
    cluster.stop();
    let gone = p.json(&["env", "refresh", "local"]);
    let config = config_for(&gone, data_dir).expect("kept, not dropped");
    assert_eq!(config["state"], json!("missing"));
    assert_eq!(config["id"], id);

    // Pointed at by PGVIRT_PGDATA_PATH, the stopped cluster is found again.
    let mut p = p;
    p.env("PGVIRT_PGDATA_PATH", data_dir);
    let back = p.json(&["env", "refresh", "local"]);
    let config = config_for(&back, data_dir).expect("found again");
    assert_eq!(config["state"], json!("present"));
    assert_eq!(config["id"], id);
    assert_eq!(config["document"]["running"], json!(false));
    assert_eq!(
        config["document"]["port"],
        json!(cluster.port),
        "port read from the configuration"
    );
}

#[test]
fn source_configs_added_by_hand_are_validated_and_removal_is_refused_while_in_use() {
    let p = Pgvirt::with_local_env();
    p.ok(&["env", "refresh", "local"]);
    let repo = p
        .json(&["repo", "list"])
        .as_array()
        .expect("repos")
        .iter()
        .find(|r| r["document"]["bin_dir"] == json!(PG_BIN))
        .expect("pg15")["id"]
        .to_string();

    let err = p.fails(&[
        "source",
        "add",
        "--env",
        "local",
        "--repo",
        &repo,
        "--data-dir",
        "relative/dir",
        "--port",
        "5999",
    ]);
    assert!(err.contains("#/data_directory"), "{err}");
    let err = p.fails(&[
        "source",
        "add",
        "--env",
        "local",
        "--repo",
        &repo,
        "--data-dir",
        "/srv/pg",
        "--port",
        "70000",
    ]);
    assert!(err.contains("#/port"), "{err}");

    let added = p.json(&[
        "source",
        "add",
        "--env",
        "local",
        "--repo",
        &repo,
        "--data-dir",
        "/srv/pg/manual",
        "--port",
        "5999",
    ]);
    assert_eq!(added["origin"], json!("manual"));
    let id = added["id"].to_string();
    let err = p.fails(&[
        "source",
        "add",
        "--env",
        "local",
        "--repo",
        &repo,
        "--data-dir",
        "/srv/pg/manual",
        "--port",
        "6000",
    ]);
    assert!(err.contains("same identity"), "{err}");

    // A refresh does not mark a hand-made config missing.
    let refreshed = p.json(&["env", "refresh", "local"]);
    assert_eq!(
        config_for(&refreshed, "/srv/pg/manual").expect("kept")["state"],
        json!("present")
    );

    // Stand in for a dSource that uses it (dSources arrive with linking).
    let store = pgvirt::host::store::Store::open(&p.store()).expect("store");
    store
        .conn()
        .execute(
            "INSERT INTO dsources (name, source_config_id, environment_id, parameters, state, created_at, dataset, mount_path)
             SELECT 'orders', id, environment_id, '{}', 'enabled', 0, 'dsource-orders', '/srv/m' FROM source_configs WHERE id = ?1",
            [added["id"].as_i64().expect("id")],
        )
        .expect("insert");
    let err = p.fails(&["source", "remove", &id]);
    assert!(err.contains("used by dSource orders"), "{err}");
    store
        .conn()
        .execute("DELETE FROM dsources", [])
        .expect("delete");
    drop(store);
    p.ok(&["source", "remove", &id]);
    assert!(config_for(&p.json(&["env", "refresh", "local"]), "/srv/pg/manual").is_none());
}

#[test]
fn env_add_refuses_root_unknown_users_and_duplicates() {
    let p = Pgvirt::new();
    assert!(p
        .fails(&["env", "add", "local", "--user", "root"])
        .contains("cannot be root"));
    assert!(p
        .fails(&["env", "add", "local", "--user", "no-such-user-xyz"])
        .contains("does not exist"));
    let err = p.fails(&["env", "add", "ssh", "--user", "postgres"]);
    assert!(err.contains("--host"), "{err}");
    let err = p.fails(&["env", "add", "elsewhere", "--user", "postgres"]);
    assert!(
        err.contains("\"elsewhere\"") && err.contains("local --user") && err.contains("--host"),
        "{err}"
    );
    p.ok(&["env", "add", "local", "--user", "postgres"]);
    assert!(p
        .fails(&["env", "add", "local", "--user", "postgres"])
        .contains("exists already"));
    let envs = p.json(&["env", "list"]);
    assert_eq!(envs.as_array().expect("list").len(), 1);
    // Refresh without a connector says what to do.
    assert!(p
        .fails(&["env", "refresh", "local"])
        .contains("connector install"));
}
