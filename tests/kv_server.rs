//! The RESP example server, driven by a small RESP client written here, so
//! nothing outside this repository is needed: commands, hostile input
//! (deep nesting, oversized requests, more clients than descriptors),
//! in-order pipelines, and a SIGKILL under load. One test also runs the
//! real `redis-benchmark` against it; it needs Debian's redis-tools and is
//! ignored (with that reason) by a plain `cargo test`; `scripts/test`
//! installs redis-tools and runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary, (re)built once per test run so it is never stale.
fn server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // In the profile these tests were built in (scripts/test --release).
            let profile: &[&str] = if cfg!(debug_assertions) { &[] } else { &["--release"] };
            let st = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--all-features", "--example", "kv_server"])
                .args(profile)
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
        Server::start_with(dir, port, None, &[])
    }

    /// Starts the server with its open-file limit (`RLIMIT_NOFILE`) set to
    /// `files`, if given, and `extra` arguments.
    fn start_with(dir: &Path, port: u16, files: Option<u64>, extra: &[&str]) -> Server {
        let mut cmd = Command::new(server_binary());
        cmd.args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // rlim_t is u64 on Linux, i64 on FreeBSD.
                    fn lim<T: TryFrom<u64>>(n: u64) -> std::io::Result<T> {
                        T::try_from(n).map_err(|_| std::io::Error::other("limit out of range"))
                    }
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        lim(n)?,
                        lim(n)?,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
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
/// its directory goes).
fn fresh_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 0);
    (s, dir)
}

/// A RESP request: an array of bulk strings.
fn request(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one reply and renders it as redis-cli prints one when its output
/// is not a terminal: simple strings, errors, integers and bulk strings as
/// their text, a nil as an empty line, an array's elements one per line.
fn read_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply line {line:?}"));
    match kind {
        "+" | "-" | ":" => Ok(rest.to_string()),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut data = vec![0u8; n as usize + 2];
            r.read_exact(&mut data)?;
            data.truncate(n as usize);
            Ok(String::from_utf8_lossy(&data).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let items: std::io::Result<Vec<String>> = (0..n.max(0)).map(|_| read_reply(r)).collect();
            Ok(items?.join("\n"))
        }
        _ => Err(bad()),
    }
}

/// One connection speaking RESP.
struct Client {
    sock: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let reader = BufReader::new(sock.try_clone().unwrap());
        Client { sock, reader }
    }

    /// Sends the commands in one write (a pipeline), then reads a reply for each.
    fn pipeline(&mut self, cmds: &[&[&str]]) -> Vec<String> {
        let bytes: Vec<u8> = cmds.iter().flat_map(|c| request(c)).collect();
        self.sock.write_all(&bytes).unwrap();
        cmds.iter().map(|_| read_reply(&mut self.reader).unwrap()).collect()
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        self.pipeline(&[args]).remove(0)
    }
}

/// One command on a new connection, its reply as redis-cli would print it.
fn cli(port: u16, args: &[&str]) -> String {
    Client::connect(port).cmd(args).trim_end().to_string()
}

/// Sends raw bytes, returns what the server answered before closing or pausing.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    // The server may answer and close before it has read all of a bad
    // request: the rest of the write then fails (EPIPE, ECONNRESET), and
    // the answer is still there to read.
    let _ = s.write_all(bytes);
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A field of INFO's answer.
fn info_field(port: u16, name: &str) -> String {
    let info = cli(port, &["info"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO has no {name}: {info}"))
        .trim()
        .to_string()
}

#[test]
fn commands() {
    let (s, _dir) = fresh_server();
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
    // The log's state in INFO, and its counters in Prometheus's format.
    assert_eq!(info_field(p, "poisoned"), "0");
    assert!(info_field(p, "segments_live").parse::<u64>().unwrap() >= 1);
    let metrics = cli(p, &["metrics"]);
    assert!(metrics.contains("# TYPE aiowal_appends_total counter"), "{metrics}");
    let appends: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aiowal_appends_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(appends >= 5, "{metrics}");
    assert!(metrics.contains("aiowal_sync_latency_seconds{quantile=\"0.99\"}"), "{metrics}");
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
#[ignore = "needs redis-benchmark (Debian's redis-tools): scripts/test installs it and runs this"]
fn redis_benchmark_runs_without_errors() {
    let (s, _dir) = fresh_server();
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

/// SIGKILL the server in the middle of a load of pipelined SETs from eight
/// clients, restart it on the same directory: every SET acknowledged to our
/// own one-at-a-time client is there.
#[test]
fn sigkill_under_load_loses_no_acknowledged_set() {
    let (s, dir) = fresh_server();
    let port = s.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8u64)
        .map(|t| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else { return };
                let mut sink = vec![0u8; 1 << 16];
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch: Vec<u8> = (0..16)
                        .flat_map(|_| {
                            i += 1;
                            request(&["SET", &format!("load:{t}:{}", i % 10_000), &"x".repeat(100)])
                        })
                        .collect();
                    if sock.write_all(&batch).is_err() || sock.read(&mut sink).unwrap_or(0) == 0 {
                        return;
                    }
                }
            })
        })
        .collect();
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
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
    let (s, dir) = fresh_server();
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

/// A request nested 10,000 arrays deep killed the server once (a recursive
/// decoder overflowed its stack). A request is an array of bulk strings:
/// anything nested is a protocol error, answered, and the server lives.
#[test]
fn deeply_nested_request_is_an_error_not_a_crash() {
    let (mut s, _dir) = fresh_server();
    for depth in [2usize, 5_000, 10_000, 200_000] {
        let mut req = b"*1\r\n".repeat(depth);
        req.extend_from_slice(b"$1\r\na\r\n");
        let answer = raw(s.port, &req);
        assert!(answer.starts_with("-ERR Protocol error"), "depth {depth}: {answer:?}");
    }
    // Absurd lengths are refused before anything is allocated for them.
    assert!(raw(s.port, b"*2000000000\r\n").starts_with("-ERR Protocol error: invalid multibulk length"));
    assert!(raw(s.port, b"*1\r\n$99999999999\r\n").starts_with("-ERR request larger than"));
    assert!(raw(s.port, b"*1\r\n$-5\r\n").starts_with("-ERR Protocol error"));
    assert!(s.child.try_wait().unwrap().is_none(), "the server died");
    assert_eq!(cli(s.port, &["ping"]), "PONG");
}

/// With a small open-file limit, clients beyond what it allows are told
/// so and closed; the server neither exits nor stops serving, and takes
/// new clients again once others leave.
#[test]
fn more_clients_than_descriptors() {
    crowd(&[]);
}

/// The same with a client cap above what the descriptors allow: `accept`
/// itself fails (EMFILE), and the server backs off and keeps serving.
#[test]
fn accept_out_of_descriptors_backs_off() {
    crowd(&["--max-clients", "1000"]);
}

/// 150 clients against a server limited to 64 descriptors.
fn crowd(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(dir.path(), 0, Some(64), extra);
    let (mut served, mut refused) = (Vec::new(), 0);
    for _ in 0..150 {
        let Ok(sock) = TcpStream::connect(("127.0.0.1", s.port)) else {
            refused += 1;
            continue;
        };
        // A client neither served nor told within a second counts as
        // refused (it may be waiting in the listen queue).
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut c = Client { reader: BufReader::new(sock.try_clone().unwrap()), sock };
        let _ = c.sock.write_all(&request(&["PING"]));
        match read_reply(&mut c.reader) {
            Ok(r) if r == "PONG" => served.push(c),
            Ok(r) => {
                assert_eq!(r, "ERR max number of clients reached");
                refused += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(!served.is_empty() && refused > 0, "{extra:?}: {} served, {refused} refused", served.len());
    assert!(s.child.try_wait().unwrap().is_none(), "the server exited");
    // Those connected are still served.
    for c in served.iter_mut().take(5) {
        assert_eq!(c.cmd(&["ping"]), "PONG");
    }
    // Once they leave, a new client gets in.
    drop(served);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(s.port);
        let _ = c.sock.write_all(&request(&["PING"]));
        match read_reply(&mut c.reader) {
            Ok(r) if r == "PONG" => break,
            other => assert!(Instant::now() < deadline, "no client accepted again: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Redis clients rely on one connection's commands taking effect in the
/// order sent, pipelined or not.
#[test]
fn pipelined_commands_take_effect_in_order() {
    let (s, _dir) = fresh_server();
    let mut c = Client::connect(s.port);
    for i in 0..300 {
        let v = format!("v{i}");
        assert_eq!(c.pipeline(&[&["SET", "k", &v], &["GET", "k"]]), ["OK", v.as_str()], "try {i}");
    }
    for i in 0..100 {
        assert_eq!(c.pipeline(&[&["SET", "n", "10"], &["INCR", "n"]]), ["OK", "11"], "try {i}");
    }
    for i in 0..50 {
        let r = c.pipeline(&[
            &["SET", "a", "1"],
            &["SET", "b", "2"],
            &["FLUSHALL"],
            &["DBSIZE"],
            &["MSET", "c", "3", "d", "4"],
            &["DEL", "c"],
            &["EXISTS", "c", "d"],
        ]);
        assert_eq!(r, ["OK", "OK", "OK", "0", "OK", "1", "1"], "try {i}");
    }
    // A pipeline of SETs is one batch: far fewer syncs than SETs.
    let before: u64 = info_field(s.port, "syncs").parse().unwrap();
    let sets: Vec<Vec<String>> =
        (0..200).map(|i| vec!["SET".into(), format!("p{i}"), format!("{i}")]).collect();
    let cmds: Vec<Vec<&str>> = sets.iter().map(|c| c.iter().map(String::as_str).collect()).collect();
    let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    assert!(c.pipeline(&cmds).iter().all(|r| r == "OK"));
    let syncs = info_field(s.port, "syncs").parse::<u64>().unwrap() - before;
    assert!(syncs < 20, "200 pipelined SETs took {syncs} syncs");
    assert_eq!(c.cmd(&["GET", "p199"]), "199");
}

/// Writes from concurrent connections still share group commits.
#[test]
fn concurrent_clients_share_syncs() {
    let (s, _dir) = fresh_server();
    let port = s.port;
    let clients: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..100 {
                    assert_eq!(c.cmd(&["SET", &format!("c{t}:{i}"), "v"]), "OK");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let per_sync: f64 = info_field(port, "records_per_sync").parse().unwrap();
    assert!(per_sync > 1.2, "16 concurrent clients, {per_sync} records per sync");
    assert_eq!(cli(port, &["dbsize"]), "1600");
}

/// Replies go out as a pipeline runs: 2,000 GETs of a 64 KiB value (125 MiB
/// of answers to a 14 KiB request) never sit in the server's memory at
/// once. An MGET's answer is capped.
#[test]
fn large_answers_are_streamed_and_capped() {
    let (mut s, _dir) = fresh_server();
    let value = "v".repeat(64 << 10);
    assert_eq!(cli(s.port, &["set", "big", &value]), "OK");
    let mut c = Client::connect(s.port);
    let reqs = b"GET big\r\n".repeat(2000);
    let mut writer = c.sock.try_clone().unwrap();
    let send = std::thread::spawn(move || writer.write_all(&reqs).unwrap());
    for i in 0..2000 {
        assert_eq!(read_reply(&mut c.reader).unwrap().len(), 64 << 10, "reply {i}");
    }
    send.join().unwrap();
    // The server's peak resident memory (Linux's /proc).
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
        let peak_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(peak_kib < 64 << 10, "the server's peak memory reached {peak_kib} KiB");
    }
    let mut mget = vec!["MGET"];
    mget.extend(std::iter::repeat_n("big", 1100));
    assert!(c.cmd(&mget).starts_with("ERR reply larger than"));
    assert!(s.child.try_wait().unwrap().is_none(), "the server died");
}
