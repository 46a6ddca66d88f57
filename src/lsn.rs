use std::fmt;

/// Log sequence number: the position of a record in the log.
///
/// LSNs are dense and start at [`Lsn::FIRST`]; record `n + 1` never becomes
/// durable before record `n`. [`Lsn::ZERO`] means "before the first record"
/// and is what [`crate::Wal::sync`] returns for a log that never held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub(crate) u64);

impl Lsn {
    /// The position before any record.
    pub const ZERO: Lsn = Lsn(0);
    /// The LSN of the first record ever appended to a log.
    pub const FIRST: Lsn = Lsn(1);

    /// Builds an LSN from its number (for LSNs stored by the caller).
    pub const fn new(n: u64) -> Lsn {
        Lsn(n)
    }

    /// The LSN's number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The LSN after this one.
    pub const fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> u64 {
        l.0
    }
}

/// The LSNs given to the records of one [`crate::Wal::append_batch`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LsnRange {
    pub(crate) first: Lsn,
    pub(crate) last: Lsn,
}

impl LsnRange {
    /// LSN of the batch's first record.
    pub const fn first(&self) -> Lsn {
        self.first
    }

    /// LSN of the batch's last record.
    pub const fn last(&self) -> Lsn {
        self.last
    }

    /// Number of records in the batch.
    pub const fn len(&self) -> u64 {
        self.last.0 - self.first.0 + 1
    }

    /// Always false: a batch holds at least one record.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether `lsn` belongs to the batch.
    pub const fn contains(&self, lsn: Lsn) -> bool {
        lsn.0 >= self.first.0 && lsn.0 <= self.last.0
    }

    /// The batch's LSNs in order.
    pub fn iter(&self) -> impl Iterator<Item = Lsn> + use<> {
        (self.first.0..=self.last.0).map(Lsn)
    }
}

impl fmt::Display for LsnRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

impl From<Lsn> for LsnRange {
    /// The range holding just `lsn`.
    fn from(lsn: Lsn) -> LsnRange {
        LsnRange { first: lsn, last: lsn }
    }
}
