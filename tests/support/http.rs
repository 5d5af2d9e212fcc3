//! A `pgvirt serve` process on a free port, and a small HTTP/1.1 client
//! (plain `TcpStream`, one connection per request) for the API tests and
//! `bench/api.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `pgvirt serve`; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `serve --listen 127.0.0.1:0` from `cmd` (a `pgvirt` command
    /// with its store set) and waits for the line with its port.
    pub fn start(mut cmd: Command) -> Self {
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        Self::start_with(cmd)
    }

    /// Starts `cmd`, a whole `pgvirt serve ...` command line.
    pub fn start_with(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pgvirt serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("serve prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends one request (`body` as JSON when given) and reads the whole reply.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    // Kept alive, and closed here once the reply is read: the client, not
    // the server, then holds the closed connection's TIME_WAIT, so a burst
    // of new connections never meets a server-side one on a reused port
    // (a SYN answered that way waits a 1 s retransmission).
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let raw = read_reply(&mut stream)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {headers:?}")))?;
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Reply {
        status,
        headers: headers.to_owned(),
        body,
    })
}

/// Reads one reply: its headers, then its body by length, chunks, or to
/// the end.
fn read_reply(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => raw.len() >= end + 4 + n,
                None if headers.contains("transfer-encoding: chunked") => {
                    find(&raw[end..], b"\r\n0\r\n\r\n").is_some()
                }
                None => false,
            };
            if done {
                return Ok(raw);
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A client bound to one server and token.
#[derive(Clone)]
pub struct Api {
    pub port: u16,
    pub token: Option<String>,
}

impl Api {
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(|b| b.to_string().into_bytes());
        request(
            self.port,
            method,
            path,
            self.token.as_deref(),
            bytes.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    /// Polls a job until it ends; returns it.
    pub fn wait_job(&self, id: i64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let job = self.get(&format!("/jobs/{id}")).json();
            if job["state"] != "running" {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} never ended: {job}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Makes a token with the CLI (`pgvirt token create`) of a store.
pub fn make_token(pgvirt: &Path, store: &Path, name: &str, read_only: bool) -> String {
    let mut cmd = Command::new(pgvirt);
    cmd.args(["token", "create", name])
        .env("PGVIRT_STORE", store);
    if read_only {
        cmd.arg("--read-only");
    }
    let out = cmd.output().expect("pgvirt runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fires `n` GET requests at once (one thread and connection each), over
/// `paths` in turn; returns each one's status and latency.
pub fn concurrent_reads(port: u16, token: &str, paths: &[&str], n: usize) -> Vec<(u16, Duration)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let path = paths[i % paths.len()].to_owned();
            let token = token.to_owned();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let started = std::time::Instant::now();
                let status = request(port, "GET", &path, Some(&token), None)
                    .map(|r| r.status)
                    .unwrap_or(0);
                (status, started.elapsed())
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or((0, Duration::ZERO)))
        .collect()
}
