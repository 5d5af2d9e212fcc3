//! A writer on a source: one row per transaction into its table `w (id
//! bigint, v text)`, logging after each commit the WAL insert position (an
//! upper bound of that commit's record), so a test can say which rows a
//! clone made as of an LSN must hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An LSN (`16/B374D848`) as a number.
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(i64, u64)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing into `w` of `database` on 127.0.0.1:`port`, from the
    /// id after the highest there, pausing `pause` between rows.
    pub fn start(port: u16, database: &str, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let mut client = postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname(database)
            .connect(postgres::NoTls)
            .expect("writer connects");
        let first: i64 = client
            .query_one("SELECT coalesce(max(id), 0)::bigint FROM w", &[])
            .expect("max id")
            .get(0);
        let handle = std::thread::spawn(move || {
            let mut i = first;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                client
                    .execute("INSERT INTO w VALUES ($1, md5($2))", &[&i, &i.to_string()])
                    .expect("insert");
                let row = client
                    .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                    .expect("lsn");
                l.lock().expect("log").push((i, lsn(row.get::<_, &str>(0))));
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        });
        Self {
            stop,
            log,
            handle: Some(handle),
        }
    }

    /// The log so far: (id, WAL insert position after its commit).
    pub fn log(&self) -> Vec<(i64, u64)> {
        self.log.lock().expect("log").clone()
    }

    /// Stops writing; the whole log.
    pub fn stop(&mut self) -> Vec<(i64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.log()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
