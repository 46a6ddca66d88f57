//! Counters kept by the pipeline and the public snapshot of them.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::io::BatchMeta;

/// What the log has done since it was opened, from [`crate::Wal::stats`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Records appended (single or in batches).
    pub appends: u64,
    /// Payload bytes appended.
    pub bytes: u64,
    /// Batches written (under `Durability::Immediate` each is one write
    /// followed by one data sync).
    pub batches: u64,
    /// Data syncs completed: one per batch under `Durability::Immediate`,
    /// fewer under the relaxed levels (some alone, with no write).
    pub syncs: u64,
    /// Bytes written to segments, headers and padding included (after
    /// compression).
    pub bytes_written: u64,
    /// Batches written compressed (`Options::compression`).
    pub batches_compressed: u64,
    /// Records written per data sync, on average (under
    /// `Durability::Immediate`, the records each sync made durable).
    pub records_per_sync: f64,
    /// Median time from submitting a batch that syncs to its completed
    /// sync (batches written without a sync are not counted).
    pub sync_latency_p50: Duration,
    /// 99th percentile of the same.
    pub sync_latency_p99: Duration,
    /// 99.9th percentile of the same.
    pub sync_latency_p999: Duration,
    /// Slowest batch.
    pub sync_latency_max: Duration,
    /// Records staged and not yet durable (queued or in flight): the
    /// log's queue depth.
    pub records_pending: u64,
    /// Batches sealed and waiting for the backend.
    pub batches_queued: u64,
    /// Batches handed to the backend and not yet completed.
    pub batches_in_flight: u64,
    /// Segments holding the log's records (readable).
    pub segments_live: u64,
    /// Retired segments kept for reuse.
    pub segments_spare: u64,
    /// Segments retired by `truncate_before` since open.
    pub segments_retired: u64,
    /// The next segment is ready (prepared) for the switch: false while it
    /// is still being zero-filled, or when none was prepared.
    pub next_segment_ready: bool,
    /// The log was poisoned (a write or sync failed): it takes no more
    /// appends until reopened.
    pub poisoned: bool,
}

pub(crate) struct Counters {
    pub segments_retired: u64,
    pub batches_compressed: u64,
    pub appends: u64,
    pub bytes: u64,
    batches: u64,
    syncs: u64,
    records: u64,
    bytes_written: u64,
    sync_ns: Histogram<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            segments_retired: 0,
            batches_compressed: 0,
            appends: 0,
            bytes: 0,
            batches: 0,
            syncs: 0,
            records: 0,
            bytes_written: 0,
            // 3 significant digits, auto-resizing: a few KiB, bounded by the
            // range of u64 nanoseconds.
            sync_ns: Histogram::new(3).expect("3 significant figures is a valid precision"),
        }
    }
}

impl Counters {
    /// A completed batch: counted as a batch if it wrote (a batch that only
    /// syncs writes nothing), as a sync (with its latency) if it synced.
    pub fn record_sync(&mut self, m: &BatchMeta) {
        if m.bytes > 0 {
            self.batches += 1;
            self.records += m.last_lsn + 1 - m.first_lsn;
            self.bytes_written += m.bytes;
        }
        if m.sync != crate::io::SyncKind::None {
            self.syncs += 1;
            let ns = u64::try_from(m.submitted.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self.sync_ns.record(ns.max(1));
        }
    }

    /// Batches and bytes written so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.batches, self.bytes_written)
    }

    pub fn snapshot(&self) -> Stats {
        let q = |p: f64| Duration::from_nanos(self.sync_ns.value_at_quantile(p));
        Stats {
            appends: self.appends,
            bytes: self.bytes,
            batches: self.batches,
            syncs: self.syncs,
            bytes_written: self.bytes_written,
            batches_compressed: self.batches_compressed,
            records_per_sync: if self.syncs == 0 { 0.0 } else { self.records as f64 / self.syncs as f64 },
            sync_latency_p50: q(0.5),
            sync_latency_p99: q(0.99),
            sync_latency_p999: q(0.999),
            sync_latency_max: Duration::from_nanos(self.sync_ns.max()),
            records_pending: 0,
            batches_queued: 0,
            batches_in_flight: 0,
            segments_live: 0,
            segments_spare: 0,
            segments_retired: self.segments_retired,
            next_segment_ready: false,
            poisoned: false,
        }
    }
}
