//! The invariant a crash must keep, checked against a model of what was
//! staged, acknowledged and truncated.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::lsn::{Lsn, LsnRange};
use crate::wal::Wal;

/// A broken durability promise found by [`Checker::check`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// An acknowledged record is missing after recovery.
    #[error("acknowledged record {lsn} was lost (the recovered log ends at {recovered_last})")]
    LostAcked {
        /// The first missing acknowledged LSN.
        lsn: Lsn,
        /// The last LSN recovered (zero when none).
        recovered_last: Lsn,
    },
    /// Records at the front of the log vanished although they are not below
    /// any `truncate_before` point.
    #[error("records from {lsn} on vanished from the front of the log (truncated only below {floor})")]
    LostFront {
        /// The first missing LSN.
        lsn: Lsn,
        /// The highest `truncate_before` LSN.
        floor: Lsn,
    },
    /// Recovered LSNs are not consecutive.
    #[error("gap in the recovered log: {found} follows {after}")]
    Gap {
        /// The LSN before the gap.
        after: Lsn,
        /// The LSN after it.
        found: Lsn,
    },
    /// A recovered LSN was never staged.
    #[error("recovered record {lsn} was never appended")]
    Unknown {
        /// The LSN.
        lsn: Lsn,
    },
    /// A recovered record differs from what was appended under its LSN.
    #[error(
        "recovered record {lsn} differs from what was appended ({found_len} bytes, {expected_len} expected)"
    )]
    Mismatch {
        /// The LSN.
        lsn: Lsn,
        /// Bytes appended.
        expected_len: usize,
        /// Bytes recovered.
        found_len: usize,
    },
    /// An atomic batch was recovered in part.
    #[error("atomic batch {batch:?} recovered in part (the log holds {recovered:?})")]
    TornBatch {
        /// The batch's LSNs.
        batch: LsnRange,
        /// What the recovered log holds.
        recovered: LsnRange,
    },
    /// The reopened log would give new records LSNs that do not follow the
    /// recovered ones.
    #[error("after recovery the durable LSN is {found}, the last recovered record is {expected}")]
    DurableLsn {
        /// The last recovered LSN.
        expected: Lsn,
        /// What the log reports.
        found: Lsn,
    },
    /// Reading the recovered log failed.
    #[error("reading the recovered log failed: {0}")]
    Read(#[from] Error),
}

/// What a successful [`Checker::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Records recovered.
    pub recovered: u64,
    /// Acknowledged records checked (present, byte for byte).
    pub acked: u64,
    /// Staged records past the acknowledged ones that the crash took.
    pub lost_unacked: u64,
    /// The recovered LSNs (empty when nothing was recovered).
    pub range: Option<LsnRange>,
}

/// A model of what a log was told, checked against what it recovers.
///
/// Tell it every staged record ([`Checker::staged`]: use [`Wal::stage`] so
/// that records whose acknowledgement the crash prevented still have a
/// known LSN), every acknowledgement ([`Checker::acked`]) and every
/// checkpoint ([`Checker::truncated_before`]). After reopening, call
/// [`Checker::check`]; it then continues from the recovered state, so one
/// checker follows a log through any number of crashes. It keeps every
/// record's bytes: memory grows with what was appended.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    records: BTreeMap<u64, Vec<u8>>,
    /// First LSN -> last LSN of each atomic batch.
    batches: BTreeMap<u64, u64>,
    acked: u64,
    floor: u64,
}

impl Checker {
    /// A checker for a new, empty log.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Records were staged under `lsns` (an atomic batch if `atomic`).
    pub fn staged<I, R>(&mut self, lsns: LsnRange, records: I, atomic: bool)
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        for (lsn, r) in lsns.iter().zip(records) {
            self.records.insert(lsn.get(), r.as_ref().to_vec());
        }
        if atomic && lsns.len() > 1 {
            self.batches.insert(lsns.first().get(), lsns.last().get());
        }
    }

    /// Everything up to `lsn` was acknowledged as durable.
    pub fn acked(&mut self, lsn: Lsn) {
        self.acked = self.acked.max(lsn.get());
    }

    /// Everything up to `lsn` was covered by a completed sync
    /// ([`Wal::sync`], [`Staged::durable`](crate::Staged::durable) or
    /// [`Wal::durable_lsn`]). Under a relaxed
    /// [`Durability`](crate::Durability) level that is the only promise
    /// that survives a power loss: an acknowledged append is not one, so a
    /// harness tells the checker this, not [`Checker::acked`], for those.
    pub fn synced(&mut self, lsn: Lsn) {
        self.acked(lsn);
    }

    /// `truncate_before(lsn)` was called (whether or not it finished).
    pub fn truncated_before(&mut self, lsn: Lsn) {
        self.floor = self.floor.max(lsn.get());
    }

    /// Reads the reopened log and checks it (see [`Checker::check_records`]).
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn check(&mut self, wal: &Wal) -> Result<CheckReport, Violation> {
        let mut recovered = Vec::new();
        for r in wal.read_from(Lsn::FIRST)? {
            let r = r?;
            recovered.push((r.lsn(), r.to_vec()));
        }
        self.check_records(recovered, wal.durable_lsn())
    }

    /// Checks recovered records (in LSN order) and the log's durable LSN
    /// after reopening: dense LSNs, each record as appended, every
    /// acknowledged record present, the front missing only below the
    /// highest truncation point, every atomic batch whole, and the durable
    /// LSN at the last record. Afterwards the model is the recovered log.
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn check_records(
        &mut self,
        recovered: impl IntoIterator<Item = (Lsn, Vec<u8>)>,
        durable: Lsn,
    ) -> Result<CheckReport, Violation> {
        let mut range: Option<(u64, u64)> = None;
        let mut count = 0u64;
        for (lsn, data) in recovered {
            let l = lsn.get();
            if let Some((_, last)) = range {
                if l != last + 1 {
                    return Err(Violation::Gap { after: Lsn(last), found: lsn });
                }
            }
            match self.records.get(&l) {
                None => return Err(Violation::Unknown { lsn }),
                Some(want) if *want != data => {
                    return Err(Violation::Mismatch { lsn, expected_len: want.len(), found_len: data.len() });
                }
                Some(_) => {}
            }
            range = Some((range.map_or(l, |(f, _)| f), l));
            count += 1;
        }
        let (first, last) = range.unwrap_or((0, 0));
        // Everything acknowledged was below a truncation point and is gone
        // with it: the log must continue after it, not restart.
        let all_truncated = range.is_none() && self.acked < self.floor;
        if all_truncated && durable.get() < self.acked {
            return Err(Violation::DurableLsn { expected: Lsn(self.acked), found: durable });
        }
        if self.acked > 0 && last < self.acked && !all_truncated {
            let lsn =
                if range.is_some() { last + 1 } else { self.records.keys().next().copied().unwrap_or(1) };
            return Err(Violation::LostAcked { lsn: Lsn(lsn), recovered_last: Lsn(last) });
        }
        if let Some(&lowest) = self.records.keys().next() {
            if range.is_some() && first > lowest && first > self.floor.max(lowest) {
                return Err(Violation::LostFront {
                    lsn: Lsn(lowest.max(self.floor)),
                    floor: Lsn(self.floor),
                });
            }
        }
        if let Some((f, l)) = range {
            for (&bf, &bl) in self.batches.range(..=l) {
                if bl >= f && (bf < f || bl > l) {
                    let batch = LsnRange { first: Lsn(bf), last: Lsn(bl) };
                    return Err(Violation::TornBatch {
                        batch,
                        recovered: LsnRange { first: Lsn(f), last: Lsn(l) },
                    });
                }
            }
            if durable.get() != l {
                return Err(Violation::DurableLsn { expected: Lsn(l), found: durable });
            }
        }
        let acked = if range.is_some() { self.acked.saturating_sub(first.saturating_sub(1)) } else { 0 };
        let end = if range.is_some() { last } else { durable.get() };
        let lost_unacked = self.records.range(end + 1..).count() as u64;
        self.records.retain(|&l, _| l <= end);
        self.batches.retain(|_, &mut l| l <= end);
        self.acked = self.acked.max(last);
        Ok(CheckReport {
            recovered: count,
            acked: acked.min(count),
            lost_unacked,
            range: range.map(|(f, l)| LsnRange { first: Lsn(f), last: Lsn(l) }),
        })
    }
}
