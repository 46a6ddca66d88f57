//! The log that the kernel's `dm-log-writes` target keeps of every write
//! to a device, and a replayer that rebuilds the device at any point of it.
//!
//! Format (drivers/md/dm-log-writes.c, Documentation/admin-guide/
//! device-mapper/log-writes.rst): block 0 of the log device holds the super
//! block (`log_write_super`: magic, version, number of entries, sector
//! size); entries follow from block 1, each one block holding a
//! `log_write_entry` (sector, number of sectors, flags, data length) and,
//! for a mark, the mark's text; a write's data follows its entry block.
//! Blocks are the logged device's logical block size.
//!
//! The lab runs dm-log-writes with `lab/dm-log-writes-submit.patch`: when a
//! flush is submitted, every write that completed before it (the writes it
//! covers) is logged, then a SUBMIT entry whose `sector` numbers the flush;
//! when the flush completes, its FLUSH entry is logged with the same number.
//! FUA writes are logged when they complete. So the device's durable state
//! at a FLUSH or FUA entry is every entry before the newest SUBMIT whose
//! flush has completed, plus the FUA writes completed since; the writes
//! between are completed but not yet covered, and may or may not be there.
//! (Stock dm-log-writes logs a flush's writes when the flush completes:
//! with overlapping flushes, a flush submitted after a write completed could
//! be logged before that write, and a replay at it missed a durable write.)

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `WRITE_LOG_MAGIC`.
const MAGIC: u64 = 0x006a_7366_7773_6872;
/// `WRITE_LOG_VERSION`.
const VERSION: u64 = 1;

pub const FLUSH: u64 = 1 << 0;
pub const FUA: u64 = 1 << 1;
pub const DISCARD: u64 = 1 << 2;
pub const MARK: u64 = 1 << 3;
/// A flush was submitted (the lab's patch): `sector` numbers it.
pub const SUBMIT: u64 = 1 << 5;

/// One entry of the log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The write's first block on the logged device (in `block` units).
    pub sector: u64,
    /// Blocks written (or discarded).
    pub blocks: u64,
    pub flags: u64,
    /// The mark's text (marks only).
    pub mark: Option<String>,
    /// Where the write's data lies in the log device (bytes).
    pub data_at: u64,
}

impl Entry {
    /// A flush or FUA write: a point at which the device's durable state
    /// is known.
    pub fn is_point(&self) -> bool {
        self.flags & (FLUSH | FUA) != 0
    }

    /// A write with data (not a mark, not a discard, not an empty flush).
    pub fn is_write(&self) -> bool {
        self.flags & (MARK | DISCARD | SUBMIT) == 0 && self.blocks > 0
    }

    /// The number of the flush this entry submits (SUBMIT) or completes
    /// (an empty FLUSH).
    pub fn flush_number(&self) -> Option<u64> {
        (self.flags & (SUBMIT | FLUSH) != 0 && self.blocks == 0).then_some(self.sector)
    }
}

/// A parsed log: its block size and entries (data left on the device).
pub struct Log {
    file: File,
    pub block: u64,
    pub entries: Vec<Entry>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Log {
    /// Reads the super block and every entry header of the log on `file`.
    pub fn open(file: File) -> io::Result<Log> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut sup = [0u8; 28];
        file.read_exact_at(&mut sup, 0)?;
        let (magic, version, count) = (le64(&sup, 0), le64(&sup, 8), le64(&sup, 16));
        let block = u64::from(u32::from_le_bytes(sup[24..28].try_into().expect("4 bytes")));
        if magic != MAGIC || version != VERSION {
            return Err(bad(format!("not a dm-log-writes log (magic {magic:#x}, version {version})")));
        }
        if !block.is_power_of_two() || !(512..=65536).contains(&block) {
            return Err(bad(format!("dm-log-writes log with block size {block}")));
        }
        let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
        let mut at = block;
        let mut head = vec![0u8; block as usize];
        for index in 0..count {
            file.read_exact_at(&mut head, at)?;
            let (sector, blocks, flags, data_len) =
                (le64(&head, 0), le64(&head, 8), le64(&head, 16), le64(&head, 24));
            let mark = if flags & MARK != 0 {
                let len = (data_len as usize).min(head.len() - 32);
                Some(String::from_utf8_lossy(&head[32..32 + len]).into_owned())
            } else {
                None
            };
            at += block;
            let data_at = at;
            if flags & (DISCARD | MARK | SUBMIT) == 0 {
                at = blocks
                    .checked_mul(block)
                    .and_then(|n| at.checked_add(n))
                    .ok_or_else(|| bad(format!("entry {index}: {blocks} blocks")))?;
            }
            entries.push(Entry { sector, blocks, flags, mark, data_at });
        }
        Ok(Log { file, block, entries })
    }

    /// The data of write `e`.
    pub fn data(&self, e: &Entry) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; (e.blocks * self.block) as usize];
        self.file.read_exact_at(&mut buf, e.data_at)?;
        Ok(buf)
    }

    /// Applies entry `e` to `dev`: writes its data, or zeroes a discard.
    pub fn apply(&self, e: &Entry, dev: &File) -> io::Result<()> {
        if e.flags & DISCARD != 0 {
            // In chunks: a discard may cover the whole device.
            let zeros = vec![0u8; 1 << 20];
            let (mut at, end) = (e.sector * self.block, (e.sector + e.blocks) * self.block);
            while at < end {
                let n = (end - at).min(zeros.len() as u64) as usize;
                dev.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            return Ok(());
        }
        if e.is_write() {
            dev.write_all_at(&self.data(e)?, e.sector * self.block)?;
        }
        Ok(())
    }
}
