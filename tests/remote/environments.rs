//! Adding a remote environment (host keys: unknown, wrong, changed), and
//! commands over SSH: variables and input on stdin, exit codes and output
//! as locally, one connection per workflow, lost connections as errors.

use std::time::{Duration, Instant};

use pgvirt::abi::CommandRequest;
use pgvirt::host::environments;
use pgvirt::host::store::Store;

use crate::support::netns::RemoteHost;
use crate::support::{processes, Pgvirt};

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Nothing of environment `name` is left in the store or the engine's files.
fn assert_no_env(p: &Pgvirt, name: &str) {
    let list = p.json(&["env", "list"]);
    assert!(
        !list.to_string().contains(&format!("\"{name}\"")),
        "environment {name} left behind: {list}"
    );
    assert!(
        !p.dir().join("ssh/keys").join(name).exists(),
        "key copy of {name} left behind"
    );
}

fn environment(p: &Pgvirt, name: &str) -> environments::Environment {
    let store = Store::open(&p.store()).expect("store");
    environments::get(&store, name).expect("environment")
}

#[test]
fn an_unknown_host_key_is_refused_with_its_fingerprint_then_accepted() {
    let host = RemoteHost::new(false);
    let p = Pgvirt::with_local_env();
    let add = host.env_add_args("east");
    let err = p.fails(&args(&add));
    let fp = host.host_fingerprint();
    assert!(err.contains("REFUSED") && err.contains("unknown"), "{err}");
    assert!(err.contains(&fp), "the fingerprint is printed: {err}");
    assert!(
        err.contains(&format!("--fingerprint {fp}")),
        "the command that accepts it is printed: {err}"
    );
    assert_no_env(&p, "east");
    assert!(
        std::fs::read_to_string(p.dir().join("ssh/known_hosts"))
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "nothing trusted silently"
    );

    // A fingerprint the host does not offer is refused, naming the flag.
    let mut wrong = add.clone();
    wrong.extend(["--fingerprint".into(), "SHA256:AAAAthisIsNotTheKey".into()]);
    let err = p.fails(&args(&wrong));
    assert!(err.contains("--fingerprint"), "{err}");
    assert_no_env(&p, "east");

    // A key the host does not accept: refused, nothing kept.
    let mut bad_key = add.clone();
    let at = bad_key.iter().position(|a| a == "--key").expect("--key") + 1;
    bad_key[at] = host.other_key().to_string_lossy().into_owned();
    bad_key.extend(["--fingerprint".into(), fp.clone()]);
    let err = p.fails(&args(&bad_key));
    assert!(err.contains("refused the key"), "{err}");
    assert_no_env(&p, "east");

    // What an add killed midway leaves (a key copy, no row) goes with the
    // next add.
    let ghost = p.dir().join("ssh/keys/ghost");
    std::fs::write(&ghost, "left by a killed add").expect("ghost key");
    let mut ok = add.clone();
    ok.extend(["--fingerprint".into(), fp.clone()]);
    p.ok(&args(&ok));
    assert!(!ghost.exists(), "the orphan key copy is removed");
    let list = p.json(&["env", "list"]);
    let east = list
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == "east")
        .unwrap_or_else(|| panic!("east listed: {list}"));
    assert_eq!(east["kind"], "ssh");
    assert_eq!(east["os_user"], "postgres");
    let key = p.dir().join("ssh/keys/east");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key)
        .expect("key copy")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ssh_dir = std::fs::metadata(p.dir().join("ssh")).expect("ssh dir");
    assert_eq!(ssh_dir.permissions().mode() & 0o777, 0o700);

    // A second environment on the same host needs no new trust.
    p.ok(&args(&host.env_add_args("east2")));
}

#[test]
fn commands_run_over_ssh_with_variables_and_input_on_stdin() {
    let host = RemoteHost::new(false);
    let p = Pgvirt::with_local_env();
    let mut add = host.env_add_args("east");
    add.extend(["--fingerprint".into(), host.host_fingerprint()]);
    p.ok(&args(&add));
    let env = environment(&p, "east");

    let secret = "pw-'$(touch /tmp/pwned)'-9e1d";
    let mut req = CommandRequest {
        command: r#"printf 'v=%s\n' "$GREETING"; printf 'in=%s\n' "$(cat)"; echo "pw=$PW" >&2; id -un; pwd; exit 7"#.into(),
        stdin: Some("line one\nline two".into()),
        ..Default::default()
    };
    req.variables
        .insert("GREETING".into(), "hello 'world' $HOME `x`".into());
    req.variables.insert("PW".into(), secret.into());
    req.secret_variables.push("PW".into());
    let out = env.run(&req).expect("runs over ssh");
    assert_eq!(out.exit_code, 7, "{out:?}");
    assert_eq!(
        out.stdout,
        "v=hello 'world' $HOME `x`\nin=line one\nline two\npostgres\n/var/lib/postgresql\n",
        "{out:?}"
    );
    assert_eq!(out.stderr, "pw=********\n");
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    // Exit codes come back as they are, even 255.
    let out = env
        .run(&CommandRequest {
            command: "exit 255".into(),
            ..Default::default()
        })
        .expect("runs");
    assert_eq!(out.exit_code, 255);

    // While a command with a secret runs, no argv on either side shows it
    // (the namespace shares this host's processes).
    let env2 = env.clone();
    let secret2 = "argv-secret-51c7d0";
    let running = std::thread::spawn(move || {
        let mut req = CommandRequest {
            command: r#"sleep 2; echo "${#S}""#.into(),
            ..Default::default()
        };
        req.variables.insert("S".into(), secret2.into());
        env2.run(&req)
    });
    std::thread::sleep(Duration::from_millis(1200));
    for (pid, argv, _) in processes() {
        assert!(
            !argv.join(" ").contains(secret2),
            "process {pid} shows the secret: {argv:?}"
        );
    }
    let out = running.join().expect("thread").expect("runs");
    assert_eq!(out.stdout.trim(), secret2.len().to_string());

    // Many commands, one connection: one master for the environment.
    for _ in 0..5 {
        env.run(&CommandRequest {
            command: "true".into(),
            ..Default::default()
        })
        .expect("runs");
    }
    let control = p.dir().join("ssh/control");
    let masters: Vec<_> = processes()
        .into_iter()
        .filter(|(_, argv, _)| {
            argv.first().is_some_and(|a| a.starts_with("ssh:"))
                && argv.join(" ").contains(control.to_str().expect("utf-8"))
        })
        .collect();
    assert_eq!(masters.len(), 1, "one control master: {masters:?}");
}

#[test]
fn a_lost_connection_is_an_error_within_the_time_outs() {
    let host = RemoteHost::new(false);
    let p = Pgvirt::with_local_env();
    let mut add = host.env_add_args("east");
    add.extend(["--fingerprint".into(), host.host_fingerprint()]);
    p.ok(&args(&add));
    let env = environment(&p, "east");

    // The host stops answering mid-command: keep-alives (1 s x 3) notice.
    let env2 = env.clone();
    let began = Instant::now();
    let running = std::thread::spawn(move || {
        env2.run(&CommandRequest {
            command: "sleep 60".into(),
            ..Default::default()
        })
    });
    std::thread::sleep(Duration::from_millis(1500));
    host.unplug();
    let err = running
        .join()
        .expect("thread")
        .expect_err("a lost connection is an error");
    assert!(began.elapsed() < Duration::from_secs(20), "no hang");
    assert!(err.to_string().contains("lost the SSH connection"), "{err}");

    // Unreachable: an error within the connect time-out (3 s), nothing added.
    let began = Instant::now();
    let err = p.fails(&args(&host.env_add_args("west")));
    assert!(
        began.elapsed() < Duration::from_secs(12),
        "{:?}",
        began.elapsed()
    );
    assert!(err.contains("cannot reach"), "{err}");
    assert_no_env(&p, "west");
    let err = env
        .run(&CommandRequest {
            command: "true".into(),
            ..Default::default()
        })
        .expect_err("unreachable");
    assert!(err.to_string().contains("SSH connection"), "{err}");

    // sshd killed during a command: an error, not a hang; and the command
    // does not run on there without its session.
    drop(host);
    let mut host = RemoteHost::new(false);
    let mut add = host.env_add_args("north");
    add.extend(["--fingerprint".into(), host.host_fingerprint()]);
    p.ok(&args(&add));
    let env = environment(&p, "north");
    let env2 = env.clone();
    let running = std::thread::spawn(move || {
        env2.run(&CommandRequest {
            command: "sleep 61.7".into(),
            ..Default::default()
        })
    });
    wait_for_remote(&["sleep", "61.7"], true);
    host.kill_sshd();
    let err = running
        .join()
        .expect("thread")
        .expect_err("sshd gone is an error");
    assert!(err.to_string().contains("SSH connection"), "{err}");
    wait_for_remote(&["sleep", "61.7"], false);

    // A command past its bound ends there too, not only here.
    host.start_sshd();
    let out = env
        .run(&CommandRequest {
            command: "sleep 62.3".into(),
            timeout_seconds: Some(2),
            ..Default::default()
        })
        .expect("an answer");
    assert_eq!(out.exit_code, -1, "{out:?}");
    assert!(out.stderr.contains("timeout"), "{out:?}");
    wait_for_remote(&["sleep", "62.3"], false);
}

/// Waits (up to 10 s) until a process with this argv runs, or until none
/// does.
fn wait_for_remote(argv: &[&str], running: bool) {
    for _ in 0..100 {
        let seen = processes().iter().any(|(_, a, _)| a == argv);
        if seen == running {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{argv:?} is still {}",
        if running { "not running" } else { "running" }
    );
}

#[test]
fn a_changed_host_key_is_refused_loudly_until_trusted_again() {
    let mut host = RemoteHost::new(false);
    let p = Pgvirt::with_local_env();
    let mut add = host.env_add_args("east");
    add.extend(["--fingerprint".into(), host.host_fingerprint()]);
    p.ok(&args(&add));
    let old = host.host_fingerprint();
    host.change_host_key();
    let new = host.host_fingerprint();
    assert_ne!(old, new);

    let err = p.fails(&["env", "refresh", "east"]);
    assert!(err.contains("CHANGED") && err.contains("REFUSED"), "{err}");
    // A second environment on the host is refused too, printing the new key.
    let err = p.fails(&args(&host.env_add_args("east2")));
    assert!(err.contains("CHANGED") && err.contains(&new), "{err}");
    assert_no_env(&p, "east2");

    let err = p.fails(&["env", "trust", "east", "--fingerprint", &old]);
    assert!(err.contains("--fingerprint"), "{err}");
    p.ok(&["env", "trust", "east", "--fingerprint", &new]);
    p.ok(&["env", "refresh", "east"]);
}

#[test]
fn another_os_user_is_reached_with_sudo_and_root_is_refused() {
    let host = RemoteHost::new(false);
    let p = Pgvirt::with_local_env();
    let fp = host.host_fingerprint();
    let mut as_root = host.env_add_args("east");
    let at = as_root
        .iter()
        .position(|a| a == "--ssh-user")
        .expect("--ssh-user")
        + 1;
    as_root[at] = "root".into();
    as_root.extend(["--fingerprint".into(), fp.clone()]);
    let err = p.fails(&args(&as_root));
    assert!(err.contains("--user cannot be root"), "{err}");
    assert_no_env(&p, "east");

    as_root.extend(["--user".into(), "postgres".into()]);
    p.ok(&args(&as_root));
    let env = environment(&p, "east");
    let mut req = CommandRequest {
        command: r#"id -un; printf '%s\n' "$HOME" "$V"; cat"#.into(),
        stdin: Some("through sudo".into()),
        ..Default::default()
    };
    req.variables.insert("V".into(), "a 'b' c".into());
    let out = env.run(&req).expect("runs");
    assert_eq!(
        out.stdout, "postgres\n/var/lib/postgresql\na 'b' c\nthrough sudo",
        "{out:?}"
    );
    assert_eq!(out.exit_code, 0);
}
