//! Remote hosts for the tests: a network namespace made by the test, a veth
//! pair with a private /30 (10.231.x.y, used only between the host end and
//! that namespace), its own `sshd` listening only on the namespace's address
//! with a host key and a user key made for the test, and its own PostgreSQL
//! cluster listening there. Everything goes on drop, even when the test
//! fails.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require_postgres, run_ok, PgDir, PG_BIN, PG_USER};

/// The replication user and password every test host's cluster has.
pub const REPL_USER: &str = "pgvirt_repl";
pub const REPL_PASSWORD: &str = "Repl-s3cret-9f2c";

/// A remote host: a network namespace with sshd and PostgreSQL.
pub struct RemoteHost {
    pub ns: String,
    host_if: String,
    /// The namespace's address (sshd and PostgreSQL listen there).
    pub addr: String,
    /// The host end's address.
    pub host_addr: String,
    dir: tempfile::TempDir,
    sshd: Option<Child>,
    pub pg: Option<NsCluster>,
}

/// Requires what the remote-host tests need (root, ip, sshd): a missing
/// prerequisite fails the test.
pub fn require_netns() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "remote-host tests make network namespaces: run as root"
    );
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keyscan"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run `bash .ci/deps` (openssh-server, openssh-client)"
        );
    }
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl RemoteHost {
    /// A namespace with its address, sshd (port 22) and, if `with_pg`, a
    /// PostgreSQL cluster on port 5432.
    pub fn new(with_pg: bool) -> Self {
        require_netns();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let slot = ((pid % 512) * 32 + k % 32) % 16384;
        let (third, fourth) = (slot / 64, (slot % 64) * 4);
        let ns = format!("pgvt-{pid}-{k}");
        let tag = format!("{}{k:02}", pid % 100000);
        let host_if = format!("pvh{tag}");
        let ns_if = format!("pvn{tag}");
        let host_addr = format!("10.231.{third}.{}", fourth + 1);
        let addr = format!("10.231.{third}.{}", fourth + 2);
        let dir = tempfile::Builder::new()
            .prefix("pgvirt-host-")
            .tempdir()
            .expect("tempdir");
        // Made before anything else, so a panic below still tears down.
        let mut me = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr: addr.clone(),
            host_addr: host_addr.clone(),
            dir,
            sshd: None,
            pg: None,
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        me.keygen("host_key");
        me.keygen("user_key");
        std::fs::copy(me.path("user_key.pub"), me.path("authorized_keys"))
            .expect("authorized_keys");
        std::fs::set_permissions(
            me.path("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        std::fs::set_permissions(me.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        me.start_sshd();
        if with_pg {
            me.pg = Some(NsCluster::start(&ns, &addr));
        }
        me
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn keygen(&self, name: &str) {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "pgvirt-test", "-f"])
                .arg(self.path(name)),
        );
    }

    /// The private key the test's user logs in with.
    pub fn user_key(&self) -> PathBuf {
        self.path("user_key")
    }

    /// A key the host does not accept.
    pub fn other_key(&self) -> PathBuf {
        if !self.path("other_key").exists() {
            self.keygen("other_key");
        }
        self.path("other_key")
    }

    /// The fingerprint (SHA256:...) of the host key sshd has now.
    pub fn host_fingerprint(&self) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.path("host_key.pub")),
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_owned()
    }

    /// Gives sshd a new host key (as a reinstall would) and restarts it.
    pub fn change_host_key(&mut self) {
        self.kill_sshd();
        let _ = std::fs::remove_file(self.path("host_key"));
        let _ = std::fs::remove_file(self.path("host_key.pub"));
        self.keygen("host_key");
        self.start_sshd();
    }

    pub fn start_sshd(&mut self) {
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let config = format!(
            "Port 22\nListenAddress {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM yes\nPermitRootLogin prohibit-password\nAllowUsers {PG_USER} root\nMaxStartups 50\nMaxSessions 50\n\
             LogLevel ERROR\n",
            self.addr,
            self.path("host_key").display(),
            self.path("sshd.pid").display(),
            self.path("authorized_keys").display(),
        );
        std::fs::write(self.path("sshd_config"), config).expect("sshd_config");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(self.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        self.sshd = Some(child);
        let to: SocketAddr = format!("{}:22", self.addr).parse().expect("address");
        let began = Instant::now();
        while TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(15),
                "sshd in {} did not listen on {to}",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills sshd and every session it started (as a host that goes away).
    pub fn kill_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The sessions' processes (sshd children) in the namespace.
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .expect("ip netns pids");
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim().starts_with("sshd") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Takes the namespace's end of the link down: the host stops answering
    /// (packets are dropped, not refused).
    pub fn unplug(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.ns_if(), "down"]);
    }

    fn ns_if(&self) -> String {
        self.host_if.replacen("pvh", "pvn", 1)
    }

    /// `pgvirt env add NAME --host ... --key ...` arguments for this host.
    pub fn env_add_args(&self, name: &str) -> Vec<String> {
        vec![
            "env".into(),
            "add".into(),
            name.into(),
            "--host".into(),
            self.addr.clone(),
            "--ssh-user".into(),
            PG_USER.into(),
            "--key".into(),
            self.user_key().to_string_lossy().into_owned(),
            "--connect-timeout".into(),
            "3".into(),
            "--alive-interval".into(),
            "1".into(),
            "--alive-count-max".into(),
            "3".into(),
        ]
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            drop(pg);
        }
        self.kill_sshd();
        // Anything else still in the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// A PostgreSQL 15 cluster started inside a namespace, listening on its
/// address (port 5432) and on a socket directory of its own; a replication
/// user with a password may connect from the host end.
pub struct NsCluster {
    home: PgDir,
    pub port: u16,
}

impl NsCluster {
    fn start(ns: &str, addr: &str) -> Self {
        require_postgres();
        let home = PgDir::new("pgvirt-nscluster-");
        let data = home.path().join("data");
        run_ok(
            super::as_pg_user(Path::new(PG_BIN).join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "--no-sync"]),
        );
        let port = 5432;
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '{addr}'\nunix_socket_directories = '{}'\nfsync = off\n\
             password_encryption = 'scram-sha-256'\n",
            home.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        append(
            &data.join("pg_hba.conf"),
            &format!(
                "host replication {REPL_USER} 10.231.0.0/16 scram-sha-256\n\
                 host all {REPL_USER} 10.231.0.0/16 scram-sha-256\n"
            ),
        );
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", ns, "runuser", "-u", PG_USER, "--"])
                .arg(Path::new(PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(home.path().join("log"))
                .arg("start"),
        );
        let c = Self { home, port };
        c.psql(
            "postgres",
            &format!("CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'"),
        );
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.home.path()
    }

    /// Appends `conf` to its postgresql.conf and restarts it (in `ns`).
    pub fn reconfigure(&self, ns: &str, conf: &str) {
        append(&self.data_dir().join("postgresql.conf"), conf);
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", ns, "runuser", "-u", PG_USER, "--"])
                .arg(Path::new(PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "60", "-l"])
                .arg(self.home.path().join("log"))
                .arg("restart"),
        );
    }

    /// Runs SQL through psql on the cluster's socket; returns trimmed output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        super::try_psql_at(self.home.path(), self.port, database, sql)
            .unwrap_or_else(|e| panic!("psql on {database} failed: {sql}\n{e}"))
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("append");
}

impl Drop for NsCluster {
    fn drop(&mut self) {
        let _ = super::as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
