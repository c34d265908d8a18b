//! The real binary under resource exhaustion and shutdown (issue 13): 1,500 half-sent
//! request headers against a process limited to 1,024 open files, probes and the API
//! answering throughout; SIGTERM with a stalled client (the shutdown deadline ends it) and
//! a second signal (exits at once), acknowledged ratings kept either way.
//!
//! Runs `funkrec serve` (`CARGO_BIN_EXE_funkrec`) as a child with `RLIMIT_NOFILE` set
//! before `exec`, configured through `FUNKREC__*` variables, logging JSON lines on stderr.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `funkrec serve` child and its log lines as they arrive.
struct Child13 {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

fn set_nofile(soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the valid `lim`; it is async-signal-safe.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Child13 {
    /// Starts the server on `data` with `env` on top of a quiet test setup; `nofile`
    /// limits its open files (soft = hard) from before `exec`.
    fn start(data: &Path, env: &[(&str, &str)], nofile: Option<u64>) -> Child13 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_funkrec"));
        cmd.arg("serve");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FUNKREC__") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("FUNKREC__SERVER__BIND", "127.0.0.1:0")
            .env("FUNKREC__STORAGE__DATA_DIR", data)
            .env("FUNKREC__LOG__JSON", "true")
            .env("FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS", "0")
            .env("FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS", "0")
            .env("FUNKREC__TRAINING__TRAIN_ON_START", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            // SAFETY: the closure runs between fork and exec and only calls setrlimit,
            // which is async-signal-safe; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || set_nofile(n, n));
            }
        }
        let mut child = cmd.spawn().expect("start funkrec");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or(json!({ "message": line }));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut c = Child13 {
            child,
            addr: String::new(),
            lines,
            seen: Vec::new(),
        };
        let listening = c.wait_log(|v| v["message"] == "listening", Duration::from_secs(60));
        c.addr = listening["addr"].as_str().unwrap().to_owned();
        c
    }

    /// The first log line (seen before or arriving within `limit`) matching `pred`.
    fn wait_log(&mut self, pred: impl Fn(&Value) -> bool, limit: Duration) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no such log line within {limit:?}; log: {:#?}", self.seen),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill sends a signal to our own child process; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits for the process to exit (failing after `limit`); its status and the time.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}");
            }
            // polling a child's exit status has no event to await without extra crates
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request on a fresh connection: status, body and how long it took.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value, Duration) {
        let started = Instant::now();
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let v = out
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, v, started.elapsed())
    }

    /// Posts `n` single ratings of user `u`; every one must be acknowledged.
    fn post_acked(&self, u: &str, n: usize) {
        for i in 0..n {
            let body = json!({"user": u, "item": format!("i{i}"), "rating": 1 + i % 5});
            let (s, v, _) = self.request("POST", "/v1/ratings", Some(&body));
            assert_eq!(s, 201, "{v}");
        }
    }

    fn total(&self, u: &str) -> u64 {
        let (s, v, _) = self.request("GET", &format!("/v1/users/{u}/ratings"), None);
        assert_eq!(s, 200, "{v}");
        v["total"].as_u64().unwrap()
    }
}

impl Drop for Child13 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a connection and sends half a request header.
fn stall(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// A connection the server has certainly accepted (one request answered on it) that is
/// now stalled halfway through its second request header.
fn stall_accepted(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("{\"status\":\"ok\"}") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// A POST whose handler is reading its body (the server sent `100 Continue`), of which
/// only a part is sent: a request in flight that graceful shutdown waits for.
fn trickle_in_flight(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /v1/ratings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"{\"user\":").unwrap();
    s
}

#[test]
fn fifteen_hundred_half_sent_headers_against_1024_open_files() {
    // this process holds 1,500 sockets itself
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, exclusively borrowed `lim`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    set_nofile(lim.rlim_max, lim.rlim_max).unwrap();
    assert!(lim.rlim_max >= 2048, "the test needs 2,048 open files");

    let dir = tempfile::tempdir().unwrap();
    let mut srv = Child13::start(
        dir.path(),
        &[("FUNKREC__SERVER__HEADER_READ_TIMEOUT_SECS", "5")],
        Some(1024),
    );
    let limits = srv.wait_log(|v| v["message"] == "open-file limit", Duration::ZERO);
    assert_eq!(
        (limits["soft"].as_u64(), limits["hard"].as_u64()),
        (Some(1024), Some(1024))
    );
    let accepting = srv.wait_log(
        |v| v["message"] == "accepting connections",
        Duration::from_secs(5),
    );
    assert_eq!(accepting["max_connections"], 1024 - 128);
    srv.post_acked("kept", 3);

    // every stalled connection is closed by the server: by eviction at the cap or by the
    // 5 s header-read timeout. A reader thread per 25 sockets, started as soon as they
    // are open (opening can take seconds: a full accept queue drops a SYN, which the
    // kernel sends again after 1 s), reads them in the order they were opened and records
    // how long each stayed open after its handshake; a close it sees late, while it
    // waited on an earlier socket, is still within that earlier socket's bound
    let (closed_tx, closed_rx) = mpsc::channel::<Duration>();
    let mut stalled: Vec<TcpStream> = Vec::with_capacity(1500);
    for _ in 0..60 {
        // (socket, when its handshake completed)
        let socks: Vec<(TcpStream, Instant)> = (0..25)
            .map(|_| (stall(&srv.addr), Instant::now()))
            .collect();
        stalled.extend(socks.iter().map(|(s, _)| s.try_clone().unwrap()));
        let tx = closed_tx.clone();
        std::thread::spawn(move || {
            for (mut s, connected) in socks {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = [0u8; 512];
                let closed = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                        Err(_) => break false,
                    }
                };
                let _ = tx.send(if closed {
                    connected.elapsed()
                } else {
                    Duration::MAX
                });
            }
        });
    }
    drop(closed_tx);
    // probes and the API answer a fresh client within 1 s, throughout
    let mut probes = 0;
    let probing = Instant::now();
    while probing.elapsed() < Duration::from_secs(8) {
        for path in ["/healthz", "/v1/users/kept/ratings"] {
            let (s, v, took) = srv.request("GET", path, None);
            assert_eq!(s, 200, "{path}: {v}");
            assert!(took < Duration::from_secs(1), "{path} took {took:?}");
            probes += 1;
        }
    }
    let closes: Vec<Duration> = closed_rx.iter().collect();
    assert_eq!(closes.len(), 1500);
    let slowest = closes.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(5 + 2),
        "a stalled connection stayed open {slowest:?} (timeout 5 s)"
    );
    assert!(probes > 10);
    assert_eq!(srv.total("kept"), 3);
    drop(stalled);
    let accept_errors = srv
        .seen
        .iter()
        .filter(|v| v["message"] == "accept failed")
        .count();
    assert_eq!(accept_errors, 0, "accept failed (EMFILE?)");
}

/// A server (shutdown deadline `deadline_secs`) with 40 acknowledged ratings, a stalled
/// header and a body still arriving, sent SIGTERM. A stalled header ends at shutdown; a
/// body still arriving keeps its request open. Returns the data dir, the server, the
/// stalled connections and the environment to restart with.
fn terminate_while_busy(
    deadline_secs: &'static str,
) -> (
    tempfile::TempDir,
    Child13,
    [TcpStream; 2],
    [(&'static str, &'static str); 3],
) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("FUNKREC__SERVER__HEADER_READ_TIMEOUT_SECS", "120"),
        ("FUNKREC__SERVER__SHUTDOWN_TIMEOUT_SECS", deadline_secs),
        ("FUNKREC__SERVER__BODY_TIMEOUT_SECS", "120"),
    ];
    let srv = Child13::start(dir.path(), &env, None);
    srv.post_acked("u", 40);
    let held = [stall_accepted(&srv.addr), trickle_in_flight(&srv.addr)];
    srv.signal(libc::SIGTERM);
    (dir, srv, held, env)
}

#[test]
fn sigterm_with_a_body_still_arriving_ends_at_the_shutdown_deadline() {
    let (dir, mut srv, _held, env) = terminate_while_busy("2");
    let (status, took) = srv.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    srv.wait_log(
        |v| v["message"] == "shutdown deadline reached: dropping the remaining connections",
        Duration::from_secs(5),
    );
    drop(srv);
    let srv = Child13::start(dir.path(), &env, None);
    assert_eq!(srv.total("u"), 40, "every acknowledged rating is kept");
}

#[test]
fn a_second_signal_exits_at_once() {
    let (dir, mut srv, _held, env) = terminate_while_busy("120");
    srv.wait_log(
        |v| v["message"] == "no longer accepting; waiting for open connections",
        Duration::from_secs(10),
    );
    assert!(srv.child.try_wait().unwrap().is_none(), "still draining");
    srv.signal(libc::SIGINT);
    let (status, took) = srv.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?} (signal {:?})",
        status.signal()
    );
    assert!(took < Duration::from_secs(2), "exited after {took:?}");
    drop(srv);
    let srv = Child13::start(dir.path(), &env, None);
    assert_eq!(srv.total("u"), 40, "every acknowledged rating is kept");
}
