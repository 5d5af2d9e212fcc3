//! The demo's story: each step through the same library calls the commands
//! use, checking what it shows.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::place;
use super::steps::Steps;
use crate::abi::CommandRequest;
use crate::host::connectors::loader::Connector;
use crate::host::connectors::package::Package;
use crate::host::connectors::registry;
use crate::host::environments::{self, Environment};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::{discovery, dsource, vdb};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Runs the demo in `dir` (a new one when none); returns the directory.
pub fn run(dir: Option<PathBuf>, user: &str, keep: bool, show: &mut Steps) -> Result<PathBuf> {
    let dir = place::make_dir(dir)?;
    let mut demo = Demo {
        dir: dir.clone(),
        store: Store::open(&dir.join("pgvirt.db"))?,
        connector: None,
        env: None,
        source_port: 0,
        show,
    };
    let result = demo.story(user);
    if result.is_err() {
        demo.show.failed();
    }
    if !keep || result.is_err() {
        let torn = place::teardown(&dir, demo.show);
        result?;
        torn?;
    }
    Ok(dir)
}

struct Demo<'a> {
    dir: PathBuf,
    store: Store,
    connector: Option<Connector>,
    env: Option<Environment>,
    source_port: u16,
    show: &'a mut Steps,
}

impl Demo<'_> {
    fn timed<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.show.start(what);
        let value = f(self)?;
        self.show.done();
        Ok(value)
    }

    fn connector(&self) -> Result<&Connector> {
        self.connector
            .as_ref()
            .ok_or_else(|| Error::usage("no connector"))
    }

    fn env(&self) -> Result<&Environment> {
        self.env
            .as_ref()
            .ok_or_else(|| Error::usage("no environment"))
    }

    fn source_dir(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// Runs SQL on a cluster by socket directory and port, as the environment user.
    fn sql(&self, socket: &str, port: u16, sql: &str) -> Result<String> {
        let env = self.env()?;
        let bin = self.bin_dir()?;
        let out = env.run_ok(&CommandRequest {
            command: r#""$BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres -d postgres -c "$SQL""#.into(),
            variables: [
                ("BIN".to_owned(), bin),
                ("HOST".to_owned(), socket.to_owned()),
                ("PORT".to_owned(), port.to_string()),
                ("SQL".to_owned(), sql.to_owned()),
            ]
            .into_iter()
            .collect(),
            ..CommandRequest::default()
        })?;
        Ok(out.stdout.trim().to_owned())
    }

    fn vdb_sql(&self, name: &str, sql: &str) -> Result<String> {
        let v = vdb::get(&self.store, name)?;
        let socket = v.source_config["socket_directory"]
            .as_str()
            .unwrap_or("/tmp")
            .to_owned();
        self.sql(&socket, v.port, sql)
    }

    fn source_sql(&self, sql: &str) -> Result<String> {
        self.sql(&self.source_dir().to_string_lossy(), self.source_port, sql)
    }

    fn bin_dir(&self) -> Result<String> {
        let env = self.env()?;
        let repos = discovery::repositories(&self.store, Some(&env.name))?;
        repos
            .iter()
            .filter(|r| r.state == discovery::Presence::Present)
            .max_by_key(|r| r.document["major_version"].as_u64())
            .and_then(|r| r.document["bin_dir"].as_str().map(str::to_owned))
            .ok_or_else(|| {
                Error::NotFound("no PostgreSQL installation found on this machine".into())
            })
    }

    fn story(&mut self, user: &str) -> Result<()> {
        self.timed("install the connector from the library beside pgvirt", |d| {
            let lib = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|p| p.join("libpgvirt.so")))
                .filter(|p| p.is_file())
                .ok_or_else(|| Error::NotFound("libpgvirt.so is not beside the pgvirt binary; run `cargo build --release`".into()))?;
            registry::install_package(&d.store, &Package::from_library(&lib)?)?;
            d.connector = Some(registry::open(&d.store, None)?);
            Ok(())
        })?;
        self.timed(
            &format!(
                "add this machine as environment `local` (OS user {user}) and discover PostgreSQL"
            ),
            |d| {
                let env = environments::add(
                    &d.store,
                    environments::EnvironmentKind::Local,
                    Some("local"),
                    user,
                    None,
                )?;
                let connector = registry::open(&d.store, None)?;
                discovery::refresh(&mut d.store, &connector, &env)?;
                d.env = Some(env);
                d.bin_dir().map(|_| ())
            },
        )?;
        self.timed(
            "create a source cluster with sample data (pgbench scale 5 + customers)",
            |d| d.make_source(),
        )?;
        let source_id = self.timed("discover the source cluster", |d| {
            let connector = registry::open(&d.store, None)?;
            let env = d.env()?.clone();
            discovery::refresh(&mut d.store, &connector, &env)?;
            let source = d.source_dir().join("data");
            discovery::source_configs(&d.store, Some("local"))?
                .into_iter()
                .find(|s| s.document["data_directory"] == json!(source))
                .map(|s| s.id.to_string())
                .ok_or_else(|| Error::NotFound("the source cluster was not discovered".into()))
        })?;
        let why = self.timed("make the storage pool", |d| {
            let (pool, why) = place::pool_dir(&d.dir)?;
            Pool::init(&d.store, &pool, None)?;
            Ok(why)
        })?;
        self.show.note(&why);
        self.timed("link the source as dSource `shop` (pg_basebackup + streaming) and snapshot it", |d| {
            let staging = free_port()?;
            dsource::link(
                &d.store,
                d.connector()?,
                dsource::LinkRequest {
                    name: "shop",
                    source_config: &source_id,
                    environment: None,
                    parameters: json!({"source": {"host": "127.0.0.1", "port": d.source_port}, "staging_port": staging}),
                },
            )
            .map(|_| ())
        })?;
        for name in ["dev", "test"] {
            self.timed(
                &format!("provision VDB `{name}` from the latest snapshot"),
                |d| {
                    vdb::provision(
                        &d.store,
                        d.connector()?,
                        vdb::ProvisionRequest {
                            name,
                            from: "shop",
                            parameters: json!({}),
                            target: None,
                            quota: None,
                        },
                    )
                    .map(|_| ())
                },
            )?;
        }
        let sizes = self.sizes()?;
        self.show.note(&sizes);
        let sum = "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c";
        self.timed(
            "write into `dev`; `test` and the source are untouched",
            |d| {
                let before = d.source_sql(sum)?;
                d.vdb_sql(
                    "dev",
                    "UPDATE customers SET email = 'masked-' || id || '@example.invalid'",
                )?;
                expect(d.vdb_sql("dev", sum)? != before, "dev changed")?;
                expect(d.vdb_sql("test", sum)? == before, "test is untouched")?;
                expect(d.source_sql(sum)? == before, "the source is untouched")
            },
        )?;
        self.timed("the source changes; sync `shop`; refresh `test`: it sees the change", |d| {
            d.source_sql("INSERT INTO customers (name, email) VALUES ('new customer', 'new@example.invalid')")?;
            dsource::sync(&d.store, d.connector()?, "shop", false)?;
            vdb::refresh(&d.store, d.connector()?, "test", None, None)?;
            expect(d.vdb_sql("test", sum)? == d.source_sql(sum)?, "test matches the source again")
        })?;
        self.timed(
            "snapshot `dev`, drop a table by mistake, rewind `dev`: the table is back",
            |d| {
                let snap = vdb::snapshot(&d.store, d.connector()?, "dev")?;
                let masked = d.vdb_sql("dev", sum)?;
                d.vdb_sql("dev", "DROP TABLE customers")?;
                vdb::rewind(&d.store, d.connector()?, "dev", Some(snap.id), None)?;
                expect(
                    d.vdb_sql("dev", sum)? == masked,
                    "dev is back as it was at its snapshot",
                )
            },
        )?;
        Ok(())
    }

    fn make_source(&mut self) -> Result<()> {
        let env = self.env()?.clone();
        let user = env.user()?;
        let dir = self.source_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        crate::host::files::set_mode(&dir, 0o700)?;
        user.chown(&dir)?;
        self.source_port = free_port()?;
        env.run_ok(&CommandRequest {
            command: r#"set -e
"$BIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$PORT" "$DIR" >> "$DIR/data/postgresql.conf"
"$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start >/dev/null
"$BIN/pgbench" -i -q -s 5 -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
"$BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d postgres -c "CREATE TABLE customers (id serial PRIMARY KEY, name text, email text); INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g;"
"#
            .into(),
            variables: [
                ("BIN".to_owned(), self.bin_dir()?),
                ("DIR".to_owned(), dir.to_string_lossy().into_owned()),
                ("PORT".to_owned(), self.source_port.to_string()),
            ]
            .into_iter()
            .collect(),
            ..CommandRequest::default()
        })?;
        Ok(())
    }

    /// The sizes that show thin cloning: the data, and what each VDB holds
    /// of its own.
    fn sizes(&self) -> Result<String> {
        let pool = Pool::open(&self.store)?;
        let list = pool.list(&self.store)?;
        let data = list
            .iter()
            .find(|d| d.dataset.name == "dsource-shop")
            .map(|d| d.space.total())
            .unwrap_or(0);
        let mut own = Vec::new();
        for name in ["dev", "test"] {
            let v = vdb::get(&self.store, name)?;
            let bytes = list
                .iter()
                .find(|d| d.dataset.name == v.dataset)
                .map(|d| d.space.exclusive)
                .unwrap_or(0);
            own.push(format!("{name} {}", megabytes(bytes)));
        }
        Ok(format!(
            "data {}; of their own the VDBs hold {} ({})",
            megabytes(data),
            own.join(", "),
            if pool.backend() == crate::host::storage::Backend::Copy {
                "full copies"
            } else {
                "thin clones: the rest is shared with the snapshot"
            }
        ))
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn expect(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "the demo expected that {what}, and it is not so"
        )))
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot find a free port on", Path::new("127.0.0.1"), e))
}
