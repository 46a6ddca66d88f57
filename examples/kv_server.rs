//! A Redis-protocol (RESP2) server over the aiowal key-value store: every
//! write is acknowledged only once its log record is durable. A connection's
//! commands take effect in the order they were sent, pipelined or not;
//! writes from concurrent connections share group commits, and a run of
//! pipelined SETs on one connection is logged as one batch.
//!
//! ```sh
//! cargo run --release --example kv_server -- --port 6380 --dir /tmp/kv-data
//! redis-cli -p 6380 set greeting hello
//! ```
//!
//! Commands: PING, ECHO, SET (no options: expiry and NX/XX are refused),
//! GET, DEL, EXISTS, INCR, INCRBY, MSET (atomic), MGET, DBSIZE, FLUSHALL,
//! SAVE (checkpoint: snapshot + log truncation), INFO (store and log
//! stats), METRICS (the log's counters in Prometheus's text format), CONFIG GET (answered for the parameters redis-benchmark asks
//! about). Unknown commands get an error reply.
//!
//! Hostile input is bounded the way Redis bounds it: a request is an array
//! of bulk strings (or an inline line), parsed without recursion, so a
//! nested array is a protocol error however deep; array lengths, bulk
//! lengths and the bytes buffered per connection are capped; malformed or
//! oversized input gets an error reply and the connection is closed. The
//! number of clients is capped below the process's open-file limit
//! (`RLIMIT_NOFILE`): a client beyond it gets "-ERR max number of clients
//! reached" and is closed (`--max-clients N` sets the cap), and if
//! `accept` still runs out of descriptors the server backs off and keeps
//! serving those it has. Replies are sent as a pipeline runs, so a small
//! request cannot make the server hold a huge answer; an MGET answers at
//! most 64 MiB; an inline command is at most 64 KiB.
#![forbid(unsafe_code)]

#[path = "kv/store.rs"]
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use store::{Op, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, Semaphore};

/// Largest request buffered from one connection before it is refused.
const REQUEST_BYTES_MAX: usize = 4 << 20;
/// Most arguments in one request (Redis allows 1024 * 1024).
const ARGS_MAX: usize = 1 << 20;
/// Most bytes of SETs from one pipeline logged as one batch, counted as
/// the log counts them (each record's frame: its bytes plus a 24-byte
/// header, rounded up to 8), well inside the log's 2 MiB `batch_bytes_max`.
const GROUP_BYTES_MAX: usize = 1 << 20;
/// The log's `max_record_bytes` (the store's default): a command whose
/// record would be larger runs alone and gets its own error.
const RECORD_BYTES_MAX: usize = 1 << 20;
/// Most bytes one MGET may answer with.
const REPLY_BYTES_MAX: usize = 64 << 20;
/// Longest inline command (Redis: 64 KiB).
const INLINE_BYTES_MAX: usize = 64 << 10;
/// Replies are sent once this many bytes of them are waiting, so a
/// pipeline of reads is answered as it runs, not held whole in memory.
const OUT_BYTES_FLUSH: usize = 64 << 10;
/// Most clients, whatever the descriptor limit allows.
const CLIENTS_MAX: u64 = 10_000;
/// Descriptors kept for the log, the snapshot and the runtime when the
/// client limit is derived from `RLIMIT_NOFILE`.
const RESERVED_FDS: u64 = 64;
/// Largest value accepted (the log's record limit, less the op header).
const VALUE_BYTES_MAX: usize = (1 << 20) - 4096;
/// Per-key locks (striped). Blind writes (SET, MSET) take their keys'
/// stripes shared: concurrent SETs share group commits, and the store's
/// per-key LSNs order them. Read-modify-writes (INCR, DEL's count) take them
/// exclusively, so they see every SET acknowledged before them and no SET
/// slips in between their read and their write.
const STRIPES: usize = 256;

/// Values written by read-modify-writes that are staged but not yet
/// durable, with their LSNs: the next INCR of the key builds on them.
type Pending = HashMap<Vec<u8>, (u64, Vec<u8>)>;

struct Server {
    store: Store,
    stripes: Vec<RwLock<Pending>>,
}

/// Held for its Drop: releases the stripe.
#[allow(dead_code)]
enum Guard<'a> {
    Shared(tokio::sync::RwLockReadGuard<'a, Pending>),
    Exclusive(tokio::sync::RwLockWriteGuard<'a, Pending>),
}

fn stripe(key: &[u8]) -> usize {
    (crc32fast::hash(key) as usize) % STRIPES
}

/// A RESP2 reply.
#[derive(Debug, Clone)]
enum Frame {
    SimpleString(Vec<u8>),
    Error(String),
    Integer(i64),
    BulkString(Vec<u8>),
    Null,
    Array(Vec<Frame>),
}

impl Frame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::SimpleString(s) => {
                out.push(b'+');
                out.extend_from_slice(s);
            }
            // An error line must not hold a line break.
            Frame::Error(e) => {
                out.push(b'-');
                out.extend(e.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            }
            Frame::Integer(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
            Frame::BulkString(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Frame::Null => out.extend_from_slice(b"$-1"),
            Frame::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for f in items {
                    f.encode(out);
                }
                return;
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn ok() -> Frame {
    Frame::SimpleString(b"OK".to_vec())
}

fn err(msg: impl Into<String>) -> Frame {
    Frame::Error(msg.into())
}

fn bulk(b: Option<Vec<u8>>) -> Frame {
    b.map_or(Frame::Null, Frame::BulkString)
}

impl Server {
    /// Locks the stripes of `keys`, in order (no deadlock between commands).
    async fn lock_keys<'a>(&'a self, keys: &[&[u8]], exclusive: bool) -> Vec<Guard<'a>> {
        let mut idx: Vec<usize> = keys.iter().map(|k| stripe(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(if exclusive {
                Guard::Exclusive(self.stripes[i].write().await)
            } else {
                Guard::Shared(self.stripes[i].read().await)
            });
        }
        guards
    }

    /// A blind write (SET, MSET).
    async fn write(&self, keys: &[&[u8]], ops: Vec<Op>) -> Result<(), String> {
        let _g = self.lock_keys(keys, false).await;
        self.store.write_batch(ops).await.map(|_| ()).map_err(|e| format!("ERR {e}"))
    }

    async fn execute(&self, args: Vec<Vec<u8>>) -> Frame {
        let Some(name) = args.first() else { return err("ERR empty command") };
        let cmd = String::from_utf8_lossy(name).to_ascii_uppercase();
        let a = &args[1..];
        let arity = |ok: bool| {
            if ok {
                None
            } else {
                Some(err(format!("ERR wrong number of arguments for '{}' command", cmd.to_lowercase())))
            }
        };
        let check = match cmd.as_str() {
            "PING" => arity(a.len() <= 1),
            "ECHO" | "GET" | "INCR" => arity(a.len() == 1),
            "SET" => arity(a.len() >= 2),
            "INCRBY" => arity(a.len() == 2),
            "DEL" | "EXISTS" | "MGET" => arity(!a.is_empty()),
            "MSET" => arity(!a.is_empty() && a.len() % 2 == 0),
            "DBSIZE" | "FLUSHALL" | "SAVE" => arity(a.len() <= 1),
            _ => None,
        };
        if let Some(e) = check {
            return e;
        }
        if a.iter().any(|v| v.len() > VALUE_BYTES_MAX) {
            return err(format!("ERR argument larger than {VALUE_BYTES_MAX} bytes"));
        }
        match cmd.as_str() {
            "PING" => {
                a.first().map_or(Frame::SimpleString(b"PONG".to_vec()), |m| Frame::BulkString(m.clone()))
            }
            "ECHO" => Frame::BulkString(a[0].clone()),
            "GET" => bulk(self.store.get(&a[0])),
            "SET" if a.len() > 2 => {
                err("ERR SET options (EX, PX, NX, XX, KEEPTTL, GET) are not supported by this server")
            }
            "SET" => match self.write(&[&a[0]], vec![Op::Put(a[0].clone(), a[1].clone())]).await {
                Ok(()) => ok(),
                Err(e) => err(e),
            },
            "MSET" => {
                let keys: Vec<&[u8]> = a.chunks(2).map(|kv| kv[0].as_slice()).collect();
                let ops = a.chunks(2).map(|kv| Op::Put(kv[0].clone(), kv[1].clone())).collect();
                match self.write(&keys, ops).await {
                    Ok(()) => ok(),
                    Err(e) => err(e),
                }
            }
            "MGET" => {
                let mut bytes = 0;
                let mut items = Vec::with_capacity(a.len().min(1024));
                for k in a {
                    let v = self.store.get(k);
                    bytes += v.as_ref().map_or(0, Vec::len) + 16;
                    if bytes > REPLY_BYTES_MAX {
                        return err(format!("ERR reply larger than {REPLY_BYTES_MAX} bytes"));
                    }
                    items.push(bulk(v));
                }
                Frame::Array(items)
            }
            "EXISTS" => Frame::Integer(a.iter().filter(|k| self.store.get(k).is_some()).count() as i64),
            "DEL" => {
                let keys: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
                let guards = self.lock_keys(&keys, true).await;
                let pending =
                    |k: &[u8]| guards.iter().any(|g| matches!(g, Guard::Exclusive(p) if p.contains_key(k)));
                let mut present: Vec<&Vec<u8>> =
                    a.iter().filter(|k| self.store.get(k).is_some() || pending(k)).collect();
                // A key named twice is deleted (and counted) once.
                present.sort_unstable();
                present.dedup();
                if present.is_empty() {
                    return Frame::Integer(0);
                }
                let ops = present.iter().map(|k| Op::Delete((*k).clone())).collect();
                match self.store.write_batch(ops).await {
                    Ok(_) => Frame::Integer(present.len() as i64),
                    Err(e) => err(format!("ERR {e}")),
                }
            }
            "INCR" | "INCRBY" => {
                let by: i64 = if cmd == "INCR" {
                    1
                } else {
                    match std::str::from_utf8(&a[1]).ok().and_then(|s| s.parse().ok()) {
                        Some(n) => n,
                        None => return err("ERR value is not an integer or out of range"),
                    }
                };
                self.incr(&a[0], by).await
            }
            "DBSIZE" => Frame::Integer(self.store.len() as i64),
            "FLUSHALL" => {
                // Every stripe: no write is half-way while the store is cleared.
                let mut guards = Vec::with_capacity(STRIPES);
                for m in &self.stripes {
                    guards.push(m.write().await);
                }
                // Increments staged before the clear must not be built on
                // after it: the clear's LSN is newer.
                for g in &mut guards {
                    g.clear();
                }
                match self.store.write_batch(vec![Op::Clear]).await {
                    Ok(_) => ok(),
                    Err(e) => err(format!("ERR {e}")),
                }
            }
            "SAVE" => match self.store.checkpoint().await {
                Ok(_) => ok(),
                Err(e) => err(format!("ERR {e}")),
            },
            "INFO" => Frame::BulkString(self.info().into_bytes()),
            "METRICS" => Frame::BulkString(self.metrics().into_bytes()),
            "CONFIG" => self.config(a),
            "COMMAND" => Frame::Array(Vec::new()),
            _ => err(format!("ERR unknown command '{}'", String::from_utf8_lossy(name))),
        }
    }

    /// INCRBY: read, compute and stage under the key's exclusive stripe
    /// lock, so the LSN order is the order of effect; wait for durability
    /// after releasing it, so increments of one key share group commits.
    async fn incr(&self, key: &[u8], by: i64) -> Frame {
        let stripe = &self.stripes[stripe(key)];
        let (staged, next) = {
            let mut pending = stripe.write().await;
            // The newest of the durable value and a staged one.
            let durable = self.store.get_versioned(key);
            let cur = match (pending.get(key), durable) {
                (Some((pl, pv)), Some((dl, _))) if *pl > dl => Some(pv.clone()),
                (Some((_, pv)), None) => Some(pv.clone()),
                (_, Some((_, dv))) => dv,
                (None, None) => None,
            };
            let cur = match cur {
                None => 0i64,
                Some(v) => match std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                    Some(n) => n,
                    None => return err("ERR value is not an integer or out of range"),
                },
            };
            let Some(next) = cur.checked_add(by) else {
                return err("ERR increment or decrement would overflow");
            };
            let value = next.to_string().into_bytes();
            let staged = match self.store.stage(vec![Op::Put(key.to_vec(), value.clone())]).await {
                Ok(s) => s,
                Err(e) => return err(format!("ERR {e}")),
            };
            pending.insert(key.to_vec(), (staged.lsn().get(), value));
            (staged, next)
        };
        let lsn = staged.lsn().get();
        let result = self.store.finish(staged).await;
        let mut pending = stripe.write().await;
        if pending.get(key).is_some_and(|(l, _)| *l == lsn) {
            pending.remove(key);
        }
        match result {
            Ok(_) => Frame::Integer(next),
            Err(e) => err(format!("ERR {e}")),
        }
    }

    fn info(&self) -> String {
        let s = self.store.wal().stats();
        let r = self.store.recovered();
        format!(
            "# Server\r\nserver:aiowal-kv\r\nbackend:{}\r\n\r\n# Keyspace\r\nkeys:{}\r\n\r\n# Recovery\r\nsnapshot_keys:{}\r\nsnapshot_lsn:{}\r\nlog_records_replayed:{}\r\n\r\n# WAL\r\nrecords:{}\r\nbytes:{}\r\nsyncs:{}\r\nrecords_per_sync:{:.2}\r\nsync_latency_p50_us:{}\r\nsync_latency_p99_us:{}\r\nsync_latency_p999_us:{}\r\ndurable_lsn:{}\r\nrecords_pending:{}\r\nbatches_in_flight:{}\r\nsegments_live:{}\r\nsegments_spare:{}\r\nsegments_retired:{}\r\nnext_segment_ready:{}\r\npoisoned:{}\r\n",
            self.store.wal().backend_name(),
            self.store.len(),
            r.snapshot_keys,
            r.snapshot_lsn,
            r.replayed,
            s.appends,
            s.bytes,
            s.syncs,
            s.records_per_sync,
            s.sync_latency_p50.as_micros(),
            s.sync_latency_p99.as_micros(),
            s.sync_latency_p999.as_micros(),
            self.store.wal().durable_lsn(),
            s.records_pending,
            s.batches_in_flight,
            s.segments_live,
            s.segments_spare,
            s.segments_retired,
            u8::from(s.next_segment_ready),
            u8::from(s.poisoned),
        )
    }

    /// The log's counters in Prometheus's text exposition format.
    fn metrics(&self) -> String {
        let s = self.store.wal().stats();
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP aiowal_{name} {help}\n# TYPE aiowal_{name} {kind}\naiowal_{name} {value}\n"
            ));
        };
        put("appends_total", "counter", "Records appended.", s.appends.to_string());
        put("appended_bytes_total", "counter", "Payload bytes appended.", s.bytes.to_string());
        put("syncs_total", "counter", "Batches written and synced.", s.syncs.to_string());
        put("written_bytes_total", "counter", "Bytes written to segments.", s.bytes_written.to_string());
        put(
            "records_per_sync",
            "gauge",
            "Records made durable per sync, mean.",
            format!("{:.3}", s.records_per_sync),
        );
        for (q, v) in
            [("0.5", s.sync_latency_p50), ("0.99", s.sync_latency_p99), ("0.999", s.sync_latency_p999)]
        {
            out.push_str(&format!(
                "aiowal_sync_latency_seconds{{quantile=\"{q}\"}} {:.6}\n",
                v.as_secs_f64()
            ));
        }
        let mut put = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP aiowal_{name} {help}\n# TYPE aiowal_{name} gauge\naiowal_{name} {value}\n"
            ));
        };
        put("durable_lsn", "Highest durable LSN.", self.store.wal().durable_lsn().get());
        put("records_pending", "Records staged, not yet durable.", s.records_pending);
        put("batches_in_flight", "Batches at the backend.", s.batches_in_flight);
        put("segments_live", "Segments holding records.", s.segments_live);
        put("segments_spare", "Retired segments kept for reuse.", s.segments_spare);
        put("segments_retired", "Segments retired since open.", s.segments_retired);
        put("poisoned", "1 once a write or sync failed.", u64::from(s.poisoned));
        out
    }

    /// CONFIG GET, answered for what this server really does.
    fn config(&self, a: &[Vec<u8>]) -> Frame {
        let sub = a.first().map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
        if sub.as_deref() != Some("GET") || a.len() != 2 {
            return err("ERR only CONFIG GET <parameter> is supported");
        }
        let param = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
        let value = match param.as_str() {
            // Every write is logged and synced before its reply.
            "appendonly" => "yes",
            "appendfsync" => "always",
            // No periodic snapshots: SAVE takes one on request.
            "save" => "",
            _ => return Frame::Array(Vec::new()),
        };
        Frame::Array(vec![
            Frame::BulkString(param.into_bytes()),
            Frame::BulkString(value.as_bytes().to_vec()),
        ])
    }
}

/// A parsed request: its arguments and how many bytes it took.
type Request = (Vec<Vec<u8>>, usize);

/// Why a request is refused; the connection is closed after the reply.
fn protocol_error(what: impl std::fmt::Display) -> String {
    format!("ERR Protocol error: {what}")
}

/// The number on a `*<n>\r\n` or `$<n>\r\n` line starting at `at`, and
/// where the line ends; `None` if the line is incomplete.
fn length_line(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, String> {
    let Some(rel) = buf[at..].iter().position(|&b| b == b'\n') else {
        if buf.len() - at > 32 {
            return Err(protocol_error(format!("invalid {what} length")));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..at + rel];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| protocol_error(format!("invalid {what} length")))?;
    Ok(Some((n, at + rel + 1)))
}

/// One request from the front of `buf`: its arguments and length, `None`
/// if incomplete, or a protocol error (the connection is then closed).
///
/// A request is an array of bulk strings, as Redis requires: the parser
/// walks it in one loop, without recursion, so no nesting or length in the
/// input can exhaust the stack, and checks every length before allocating.
fn next_request(buf: &[u8]) -> Result<Option<Request>, String> {
    if buf.first() != Some(&b'*') {
        return inline_request(buf);
    }
    let Some((n, mut at)) = length_line(buf, 0, "multibulk")? else { return Ok(None) };
    if n <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > ARGS_MAX {
        return Err(protocol_error("invalid multibulk length"));
    }
    // Where each argument lies; copied out only once the request is whole,
    // so an incomplete one costs a scan per read, not an allocation per
    // argument.
    let mut ranges = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&c) => return Err(protocol_error(format!("expected '$', got '{}'", c as char))),
        }
        let Some((len, start)) = length_line(buf, at, "bulk")? else { return Ok(None) };
        let len = usize::try_from(len).map_err(|_| protocol_error("invalid bulk length"))?;
        if len > REQUEST_BYTES_MAX {
            return Err(format!("ERR request larger than {REQUEST_BYTES_MAX} bytes"));
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol_error("bulk string not followed by CRLF"));
        }
        ranges.push(start..end);
        at = end + 2;
    }
    Ok(Some((ranges.into_iter().map(|r| buf[r].to_vec()).collect(), at)))
}

/// An inline command: one text line, arguments separated by blanks.
fn inline_request(buf: &[u8]) -> Result<Option<Request>, String> {
    let Some(end) = buf.iter().take(INLINE_BYTES_MAX + 1).position(|&b| b == b'\n') else {
        if buf.len() > INLINE_BYTES_MAX {
            return Err(protocol_error(format!("inline command longer than {INLINE_BYTES_MAX} bytes")));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| b == 0 || b == b'"' || b == b'\'') {
        return Err(protocol_error("malformed inline command (quotes and NUL bytes are not accepted)"));
    }
    let args =
        line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).map(<[u8]>::to_vec).collect();
    Ok(Some((args, end + 1)))
}

/// A SET without options or an MSET: a write whose reply does not depend
/// on what is stored, which may share a batch with its neighbours.
fn blind_write(args: &[Vec<u8>]) -> Option<(Vec<Vec<u8>>, Vec<Op>)> {
    let name = String::from_utf8_lossy(args.first()?).to_ascii_uppercase();
    let a = &args[1..];
    // Each record's frame must fit the log's record limit on its own.
    let fits = a.chunks(2).all(|kv| kv.iter().map(Vec::len).sum::<usize>() + 64 <= RECORD_BYTES_MAX);
    match name.as_str() {
        "SET" if a.len() == 2 && fits => {
            Some((vec![a[0].clone()], vec![Op::Put(a[0].clone(), a[1].clone())]))
        }
        "MSET" if !a.is_empty() && a.len() % 2 == 0 && fits => {
            let keys = a.chunks(2).map(|kv| kv[0].clone()).collect();
            let ops = a.chunks(2).map(|kv| Op::Put(kv[0].clone(), kv[1].clone())).collect();
            Some((keys, ops))
        }
        _ => None,
    }
}

/// Blind writes from one pipeline waiting to be logged as one batch.
#[derive(Default)]
struct Group {
    keys: Vec<Vec<u8>>,
    ops: Vec<Op>,
    commands: usize,
    bytes: usize,
}

impl Group {
    /// Logs the group as one atomic batch, and answers each of its commands.
    async fn flush(&mut self, server: &Server, out: &mut Vec<u8>) {
        if self.commands == 0 {
            return;
        }
        let keys: Vec<&[u8]> = self.keys.iter().map(Vec::as_slice).collect();
        let reply = match server.write(&keys, std::mem::take(&mut self.ops)).await {
            Ok(()) => ok(),
            Err(e) => err(e),
        };
        for _ in 0..self.commands {
            reply.encode(out);
        }
        *self = Group::default();
    }
}

/// Runs the requests of one pipeline in order and appends their replies to
/// `out`. Each command takes effect before the next one runs; a run of
/// blind writes (SET, MSET) is logged as one batch, so a pipeline of SETs
/// costs one sync.
/// Replies waiting in `out` are sent once there are enough of them; an
/// error means the client is gone.
async fn send_some(sock: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.len() >= OUT_BYTES_FLUSH {
        sock.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Runs the requests of one pipeline in order, answering into `out` (sent
/// as it fills). Each command takes effect before the next one runs; a run
/// of blind writes (SET, MSET) is logged as one batch, so a pipeline of
/// SETs costs one sync.
async fn execute_pipeline(
    server: &Server,
    requests: Vec<Vec<Vec<u8>>>,
    sock: &mut TcpStream,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut group = Group::default();
    for args in requests {
        if let Some((keys, ops)) = blind_write(&args) {
            // As the log counts it: per record, the op's bytes and a frame header.
            let bytes: usize = ops
                .iter()
                .map(|op| match op {
                    Op::Put(k, v) => (5 + k.len() + v.len() + 24).next_multiple_of(8),
                    _ => 32,
                })
                .sum();
            if group.commands > 0 && group.bytes + bytes > GROUP_BYTES_MAX {
                group.flush(server, out).await;
                send_some(sock, out).await?;
            }
            group.keys.extend(keys);
            group.ops.extend(ops);
            group.commands += 1;
            group.bytes += bytes;
            continue;
        }
        group.flush(server, out).await;
        server.execute(args).await.encode(out);
        send_some(sock, out).await?;
    }
    group.flush(server, out).await;
    Ok(())
}

async fn serve(server: Arc<Server>, mut sock: TcpStream) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Everything complete in the buffer is one pipeline.
        let mut requests = Vec::new();
        let mut used = 0;
        let mut fatal = None;
        loop {
            match next_request(&buf[used..]) {
                Ok(Some((args, len))) => {
                    used += len;
                    if !args.is_empty() {
                        requests.push(args);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fatal = Some(e);
                    used = buf.len();
                    break;
                }
            }
        }
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > (1 << 20) {
            // Not kept for the connection's life after one large request.
            buf = Vec::new();
        }
        if execute_pipeline(&server, requests, &mut sock, &mut out).await.is_err() {
            return;
        }
        if fatal.is_none() && buf.len() > REQUEST_BYTES_MAX {
            fatal = Some(format!("ERR request larger than {REQUEST_BYTES_MAX} bytes"));
        }
        if let Some(e) = &fatal {
            err(e.clone()).encode(&mut out);
        }
        if sock.write_all(&out).await.is_err() || fatal.is_some() {
            return;
        }
        out.clear();
        if out.capacity() > (1 << 20) {
            out = Vec::new();
        }
    }
}

/// How many clients may be connected at once: below the process's
/// open-file limit, leaving room for the log's own files.
fn max_clients() -> usize {
    // rlim_t is u64 on Linux, i64 on FreeBSD.
    fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
        v.try_into().unwrap_or(u64::MAX)
    }
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| to_u64(soft))
        .unwrap_or(1024);
    let n = if soft > 2 * RESERVED_FDS { soft - RESERVED_FDS } else { soft / 2 };
    usize::try_from(n.clamp(1, CLIENTS_MAX)).unwrap_or(1)
}

/// Accepts clients for ever. A client beyond the limit is told so and
/// closed; when `accept` itself fails (out of descriptors or memory), the
/// server waits a little and goes on serving the clients it has.
async fn accept_loop(listener: TcpListener, server: Arc<Server>, limit: usize) {
    const FULL: &[u8] = b"-ERR max number of clients reached\r\n";
    let slots = Arc::new(Semaphore::new(limit));
    // A descriptor kept in reserve: when accept fails for want of one, it
    // is let go so the waiting client can be accepted, told why and closed,
    // instead of hanging in the listen queue.
    let spare = || std::fs::File::open("/dev/null").ok();
    let mut reserve = spare();
    let mut warned = false;
    loop {
        match listener.accept().await {
            Ok((mut sock, _)) => {
                let _ = sock.set_nodelay(true);
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let server = Arc::clone(&server);
                        tokio::spawn(async move {
                            serve(server, sock).await;
                            drop(slot);
                        });
                    }
                    // As Redis does: say why, then close.
                    Err(_) => {
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(FULL)).await;
                        });
                    }
                }
                warned = false;
            }
            Err(e) => {
                if !warned {
                    eprintln!(
                        "kv_server: accept failed ({e}); backing off, still serving {} clients",
                        limit - slots.available_permits()
                    );
                    warned = true;
                }
                use nix::errno::Errno;
                let out_of_descriptors = matches!(e.raw_os_error(), Some(n) if n == Errno::EMFILE as i32 || n == Errno::ENFILE as i32);
                if out_of_descriptors && reserve.take().is_some() {
                    let waiting = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await;
                    let told = if let Ok(Ok((mut sock, _))) = waiting {
                        let _ = tokio::time::timeout(Duration::from_millis(100), sock.write_all(FULL)).await;
                        true
                    } else {
                        false
                    };
                    reserve = spare();
                    if told {
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if reserve.is_none() {
                    reserve = spare();
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 6380u16;
    let mut dir = std::path::PathBuf::from("kv-server-data");
    let mut clients = max_clients();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().map_err(|_| format!("--port: not a port number: {p}"))?,
            ("--dir", Some(d)) => dir = d.into(),
            // Like Redis's maxclients; by default below the descriptor limit.
            ("--max-clients", Some(n)) => {
                clients = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--max-clients: not a positive number: {n}"))?
            }
            _ => {
                return Err(
                    format!("usage: kv_server [--port N] [--dir PATH] [--max-clients N] (got {a})").into()
                );
            }
        }
    }
    let store = Store::open(&dir).await?;
    let r = store.recovered();
    println!(
        "recovered {} keys from the snapshot (LSN {}) and replayed {} log records",
        r.snapshot_keys, r.snapshot_lsn, r.replayed
    );
    let server =
        Arc::new(Server { store, stripes: (0..STRIPES).map(|_| RwLock::new(HashMap::new())).collect() });
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    // With --port 0 the system picks the port: say which.
    let port = listener.local_addr()?.port();
    println!("listening on 127.0.0.1:{port}, data in {}, at most {clients} clients", dir.display());
    accept_loop(listener, server, clients).await;
    Ok(())
}
