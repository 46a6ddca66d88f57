//! A Redis-protocol (RESP2) server over the aiowal key-value store: every
//! write is acknowledged only once its log record is durable, pipelined
//! writes on a connection and writes from concurrent clients share group
//! commits.
//!
//! ```sh
//! cargo run --release --example kv_server -- --port 6380 --dir /tmp/kv-data
//! redis-cli -p 6380 set greeting hello
//! ```
//!
//! Commands: PING, ECHO, SET (no options: expiry and NX/XX are refused),
//! GET, DEL, EXISTS, INCR, INCRBY, MSET (atomic), MGET, DBSIZE, FLUSHALL,
//! SAVE (checkpoint: snapshot + log truncation), INFO (store and log
//! stats), CONFIG GET (answered for the parameters redis-benchmark asks
//! about). Requests are parsed with the `redis-protocol` crate; inline
//! commands (plain text lines) are accepted too. Unknown commands get an
//! error reply; malformed or oversized input gets an error reply and the
//! connection is closed, as Redis does.
#![forbid(unsafe_code)]

#[path = "kv/store.rs"]
mod store;

use std::collections::HashMap;
use std::sync::Arc;

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame as Frame, Resp2Frame};
use store::{Op, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLock;

/// Largest request buffered from one connection before it is refused.
const REQUEST_BYTES_MAX: usize = 4 << 20;
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

enum Reply {
    Frame(Frame),
    /// Send the error, then close the connection.
    Fatal(String),
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
            "MGET" => Frame::Array(a.iter().map(|k| bulk(self.store.get(k))).collect()),
            "EXISTS" => Frame::Integer(a.iter().filter(|k| self.store.get(k).is_some()).count() as i64),
            "DEL" => {
                let keys: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
                let guards = self.lock_keys(&keys, true).await;
                let pending =
                    |k: &[u8]| guards.iter().any(|g| matches!(g, Guard::Exclusive(p) if p.contains_key(k)));
                let present: Vec<&Vec<u8>> =
                    a.iter().filter(|k| self.store.get(k).is_some() || pending(k)).collect();
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
                let mut _g = Vec::with_capacity(STRIPES);
                for m in &self.stripes {
                    _g.push(m.write().await);
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
            "# Server\r\nserver:aiowal-kv\r\nbackend:{}\r\n\r\n# Keyspace\r\nkeys:{}\r\n\r\n# Recovery\r\nsnapshot_keys:{}\r\nsnapshot_lsn:{}\r\nlog_records_replayed:{}\r\n\r\n# WAL\r\nrecords:{}\r\nbytes:{}\r\nsyncs:{}\r\nrecords_per_sync:{:.2}\r\nsync_latency_p50_us:{}\r\nsync_latency_p99_us:{}\r\nsync_latency_p999_us:{}\r\ndurable_lsn:{}\r\n",
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
        )
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

/// The arguments of a request frame: an array of bulk strings.
fn args_of(frame: Frame) -> Result<Vec<Vec<u8>>, String> {
    let Frame::Array(items) = frame else {
        return Err("ERR Protocol error: expected an array of bulk strings".into());
    };
    items
        .into_iter()
        .map(|f| match f {
            Frame::BulkString(b) | Frame::SimpleString(b) => Ok(b),
            _ => Err("ERR Protocol error: expected bulk strings".to_string()),
        })
        .collect()
}

/// A parsed request: its arguments and how many bytes it took.
type Request = (Vec<Vec<u8>>, usize);

/// One request from the front of `buf`: its arguments and length, `None`
/// if incomplete, or a fatal protocol error.
fn next_request(buf: &[u8]) -> Result<Option<Request>, String> {
    if buf.first() == Some(&b'*') {
        return match decode(buf) {
            Ok(Some((frame, used))) => args_of(frame).map(|a| Some((a, used))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("ERR Protocol error: {e}")),
        };
    }
    // Inline command: one text line, arguments separated by blanks.
    let Some(end) = buf.iter().position(|&b| b == b'\n') else { return Ok(None) };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| b == 0 || b == b'"' || b == b'\'') {
        return Err(
            "ERR Protocol error: malformed inline command (quotes and NUL bytes are not accepted)".into()
        );
    }
    let args =
        line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).map(<[u8]>::to_vec).collect();
    Ok(Some((args, end + 1)))
}

fn frame_bytes(f: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + f.encode_len(false), 0);
    if encode(&mut out[start..], f, false).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"-ERR could not encode reply\r\n");
    }
}

async fn serve(server: Arc<Server>, mut sock: TcpStream) {
    let mut buf = Vec::with_capacity(16 << 10);
    let mut out = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Everything complete in the buffer is one pipeline: runs of writes
        // execute concurrently (sharing group commits), replies stay in order.
        let mut replies = Vec::new();
        let mut used = 0;
        loop {
            match next_request(&buf[used..]) {
                Ok(Some((args, len))) => {
                    used += len;
                    if args.is_empty() {
                        continue;
                    }
                    let s = Arc::clone(&server);
                    replies.push(tokio::spawn(async move { Reply::Frame(s.execute(args).await) }));
                }
                Ok(None) => break,
                Err(e) => {
                    replies.push(tokio::spawn(async move { Reply::Fatal(e) }));
                    used = buf.len();
                    break;
                }
            }
        }
        buf.drain(..used);
        let mut fatal = false;
        for r in replies {
            match r.await {
                Ok(Reply::Frame(f)) => frame_bytes(&f, &mut out),
                Ok(Reply::Fatal(e)) => {
                    frame_bytes(&err(e), &mut out);
                    fatal = true;
                }
                Err(_) => frame_bytes(&err("ERR internal error"), &mut out),
            }
        }
        if buf.len() > REQUEST_BYTES_MAX {
            frame_bytes(&err(format!("ERR request larger than {REQUEST_BYTES_MAX} bytes")), &mut out);
            fatal = true;
        }
        if sock.write_all(&out).await.is_err() || fatal {
            return;
        }
        out.clear();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 6380u16;
    let mut dir = std::path::PathBuf::from("kv-server-data");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().map_err(|_| format!("--port: not a port number: {p}"))?,
            ("--dir", Some(d)) => dir = d.into(),
            _ => return Err(format!("usage: kv_server [--port N] [--dir PATH] (got {a})").into()),
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
    println!("listening on 127.0.0.1:{port}, data in {}", dir.display());
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        tokio::spawn(serve(Arc::clone(&server), sock));
    }
}
