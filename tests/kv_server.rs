//! The RESP example server under the real Redis clients: redis-cli and
//! redis-benchmark (Debian's redis-tools; `.ci/run` installs them). Set
//! AIOWAL_SKIP_REDIS_TESTS=1 to skip where they cannot be installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn skip() -> bool {
    if std::env::var_os("AIOWAL_SKIP_REDIS_TESTS").is_some() {
        eprintln!("AIOWAL_SKIP_REDIS_TESTS is set: skipping");
        return true;
    }
    false
}

/// The example binary, (re)built once per test run so it is never stale.
fn server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let st = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--all-features", "--example", "kv_server"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(st.success(), "building the kv_server example failed");
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap();
            profile_dir.join("examples").join("kv_server")
        })
        .clone()
}

struct Server {
    child: Child,
    port: u16,
    recovered: String,
}

impl Server {
    /// Starts the server; `port` 0 lets it pick a free one (no race between
    /// tests running in parallel).
    fn start(dir: &Path, port: u16) -> Server {
        let mut child = Command::new(server_binary())
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, out) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // From here on a failed check still kills the child (Drop).
        let mut server = Server { child, port: 0, recovered: String::new() };
        let wait = Duration::from_secs(20);
        server.recovered = out.recv_timeout(wait).expect("kv_server printed nothing");
        let listening = out.recv_timeout(wait).expect("kv_server did not start listening");
        server.port = listening
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line: {listening}"));
        let deadline = Instant::now() + wait;
        while TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            assert!(Instant::now() < deadline, "kv_server does not accept connections");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The first line the server printed (what it recovered).
    fn recovered_line(&self) -> String {
        self.recovered.clone()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server on a new directory (dropped first, so the server dies before
/// its directory goes), or `None` when these tests are skipped.
fn fresh_server() -> Option<(Server, tempfile::TempDir)> {
    if skip() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 0);
    Some((s, dir))
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (install redis-tools, or set AIOWAL_SKIP_REDIS_TESTS=1)");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Sends raw bytes, returns what the server answered before closing or pausing.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn redis_cli_commands() {
    let Some((s, _dir)) = fresh_server() else { return };
    let p = s.port;
    assert_eq!(cli(p, &["ping"]), "PONG");
    assert_eq!(cli(p, &["set", "a", "1"]), "OK");
    assert_eq!(cli(p, &["get", "a"]), "1");
    assert_eq!(cli(p, &["incr", "a"]), "2");
    assert_eq!(cli(p, &["incrby", "a", "40"]), "42");
    assert_eq!(cli(p, &["mset", "x", "1", "y", "2"]), "OK");
    // redis-cli prints a nil bulk string in an array as an empty line.
    assert_eq!(cli(p, &["mget", "x", "y", "nope"]), "1\n2");
    assert_eq!(cli(p, &["exists", "x", "y", "nope"]), "2");
    assert_eq!(cli(p, &["del", "x", "nope"]), "1");
    assert_eq!(cli(p, &["dbsize"]), "2");
    assert_eq!(cli(p, &["echo", "hi"]), "hi");
    assert!(cli(p, &["incr", "y2"]).ends_with('1'));
    assert!(cli(p, &["set", "k", "v", "ex", "10"]).contains("not supported"));
    assert!(cli(p, &["frobnicate", "x"]).starts_with("ERR unknown command"));
    assert!(cli(p, &["get"]).contains("wrong number of arguments"));
    assert!(cli(p, &["info"]).contains("records_per_sync"));
    // Inline commands work; a malformed one gets an error, not a silent drop.
    assert_eq!(raw(p, b"PING\r\n"), "+PONG\r\n");
    assert!(raw(p, b"GET \"unterminated\r\n").starts_with("-ERR Protocol error"));
    assert!(raw(p, b"*2\r\n$3\r\nGET\r\n$x\r\n").starts_with("-ERR Protocol error"));
    // An oversized request is refused with an error, not buffered forever.
    let mut big = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n".to_vec();
    big.resize(big.len() + (5 << 20), b'x');
    let mut sock = TcpStream::connect(("127.0.0.1", p)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = sock.write_all(&big);
    let mut answer = String::new();
    let _ = BufReader::new(&sock).read_line(&mut answer);
    assert!(answer.starts_with("-ERR request larger than"), "{answer:?}");
    assert_eq!(cli(p, &["flushall"]), "OK");
    assert_eq!(cli(p, &["dbsize"]), "0");
}

#[test]
fn redis_benchmark_runs_without_errors() {
    let Some((s, _dir)) = fresh_server() else { return };
    let out = Command::new("redis-benchmark")
        .args(["-p", &s.port.to_string(), "-t", "set,get,incr", "-n", "20000", "-c", "16", "-q"])
        .output()
        .expect("redis-benchmark (install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    for t in ["SET", "GET", "INCR"] {
        assert!(text.contains(&format!("{t}: ")), "{text}");
    }
    assert_eq!(cli(s.port, &["get", "counter:__rand_int__"]), "20000");
}

/// SIGKILL the server in the middle of a redis-benchmark SET run, restart it
/// on the same directory: every SET acknowledged to our own client is there.
#[test]
fn sigkill_mid_benchmark_loses_no_acknowledged_set() {
    let Some((s, dir)) = fresh_server() else { return };
    let port = s.port;
    let mut bench = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", "set", "-r", "100000", "-n", "100000000", "-c", "16", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = std::thread::spawn(move || {
        // Our own client: SET own:i = value-i, one at a time, noting the acks.
        let mut acked = Vec::new();
        let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else { return acked };
        let mut reply = [0u8; 5];
        for i in 0u64.. {
            let (k, v) = (format!("own:{i}"), format!("value-{i}"));
            let req = format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len());
            if sock.write_all(req.as_bytes()).is_err() || sock.read_exact(&mut reply).is_err() {
                return acked;
            }
            assert_eq!(&reply, b"+OK\r\n");
            acked.push(i);
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(1500));
    s.kill();
    let acked = client.join().unwrap();
    let _ = bench.kill();
    let _ = bench.wait();
    assert!(acked.len() > 50, "only {} SETs acknowledged before the kill", acked.len());

    let s = Server::start(dir.path(), 0);
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    for i in &acked {
        let k = format!("own:{i}");
        sock.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_ne!(line, "$-1\r\n", "acknowledged SET of {k} lost");
        let mut value = String::new();
        reader.read_line(&mut value).unwrap();
        assert_eq!(value.trim_end(), format!("value-{i}"), "{k} came back different");
    }
    drop(s);
}

/// After SAVE (a checkpoint), a restart loads the snapshot and replays only
/// the log records written after it.
#[test]
fn restart_after_checkpoint_replays_only_the_tail() {
    let Some((s, dir)) = fresh_server() else { return };
    let port = s.port;
    for i in 0..50 {
        assert_eq!(cli(port, &["set", &format!("k{i}"), &format!("v{i}")]), "OK");
    }
    assert_eq!(cli(port, &["save"]), "OK");
    for i in 50..60 {
        assert_eq!(cli(port, &["set", &format!("k{i}"), &format!("v{i}")]), "OK");
    }
    s.kill();
    let s = Server::start(dir.path(), 0);
    let port = s.port;
    let line = s.recovered_line();
    assert!(
        line.contains("recovered 50 keys from the snapshot") && line.contains("replayed 10 log records"),
        "{line}"
    );
    let info = cli(port, &["info"]);
    assert!(info.contains("snapshot_keys:50") && info.contains("log_records_replayed:10"), "{info}");
    assert_eq!(cli(port, &["dbsize"]), "60");
    assert_eq!(cli(port, &["get", "k59"]), "v59");
}
