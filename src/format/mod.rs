//! The on-disk format: a pure codec, bytes in and values out, no I/O.
//!
//! A log is a directory of segment files. Every segment starts with a header
//! block (`alignment` bytes, normally 4096) followed by frames. Frames are
//! 8-byte aligned; every write batch starts on a fresh block and ends with a
//! padding frame that fills it up to the next block boundary, so no write ever
//! touches a block that holds acknowledged data.
//!
//! ```text
//! Segment header (first 64 bytes of block 0; the rest of the block is zero)
//!  offset size field
//!       0    8 magic          b"AIOWALsg"
//!       8    4 version        u32 LE (1)
//!      12    4 alignment      u32 LE, power of two, 512..=65536
//!      16    8 sequence       u64 LE, equals the number in the file name
//!      24    8 first_lsn      u64 LE, LSN of the first frame in the segment
//!      32    8 salt           u64 LE, random per segment
//!      40    8 segment_bytes  u64 LE, preallocated size of the file
//!      48    8 window_bytes   u64 LE, most bytes ever in flight (torn-tail window)
//!      56    4 log_id         u32 LE, random per log, the same in all its segments
//!      60    4 header_crc     u32 LE, CRC32 of bytes 0..60
//!
//! Frame (24-byte header, payload, zeroes up to the next multiple of 8)
//!  offset size field
//!       0    4 crc            u32 LE, CRC32 of salt (8 bytes LE) ++ bytes 4..24
//!                             ++ payload (padding frames: the payload is not covered)
//!       4    4 len            u32 LE, payload length in bytes
//!       8    8 lsn            u64 LE; padding frames carry the next LSN to be used
//!      16    1 kind           1 record, 2 batch begin, 3 batch middle,
//!                             4 batch end, 5 padding
//!      17    7 reserved       zero
//!      24  len payload
//! ```
//!
//! A single record is one `Record` frame. An atomic batch of n >= 2 records is
//! `BatchBegin`, n-2 `BatchMiddle` and `BatchEnd` frames with consecutive LSNs;
//! recovery yields its records only when the `BatchEnd` frame is intact.
//!
//! The salt in every frame's checksum makes bytes left over from an earlier
//! incarnation of the file (a recycled segment, a torn tail that was cut) fail
//! the check, and the LSN must continue the sequence exactly.

#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::fmt;

/// Identifies a segment file: "AIOWAL" + "sg".
pub const MAGIC: [u8; 8] = *b"AIOWALsg";
/// The only format version this build reads and writes.
pub const VERSION: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const ALIGNMENT_OFFSET: usize = VERSION_OFFSET + 4;
const SEQUENCE_OFFSET: usize = ALIGNMENT_OFFSET + 4;
const FIRST_LSN_OFFSET: usize = SEQUENCE_OFFSET + 8;
const SALT_OFFSET: usize = FIRST_LSN_OFFSET + 8;
const SEGMENT_BYTES_OFFSET: usize = SALT_OFFSET + 8;
const WINDOW_BYTES_OFFSET: usize = SEGMENT_BYTES_OFFSET + 8;
const LOG_ID_OFFSET: usize = WINDOW_BYTES_OFFSET + 8;
const HEADER_CRC_OFFSET: usize = LOG_ID_OFFSET + 4;
/// Bytes of the segment header that carry information.
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC_OFFSET + 4;

const FRAME_CRC_OFFSET: usize = 0;
const FRAME_LEN_OFFSET: usize = FRAME_CRC_OFFSET + 4;
const FRAME_LSN_OFFSET: usize = FRAME_LEN_OFFSET + 4;
const FRAME_KIND_OFFSET: usize = FRAME_LSN_OFFSET + 8;
const FRAME_RESERVED_OFFSET: usize = FRAME_KIND_OFFSET + 1;
/// Length of a frame header; payloads follow it.
pub const FRAME_HEADER_LEN: usize = FRAME_RESERVED_OFFSET + 7;
/// Every frame starts at a multiple of this.
pub const FRAME_ALIGN: usize = 8;

/// Largest LSN a segment may start at: far beyond any real log, and far
/// enough below `u64::MAX` that LSN arithmetic cannot overflow.
pub const LSN_MAX: u64 = 1 << 62;

/// Smallest and largest supported block alignment.
pub const ALIGNMENT_MIN: u32 = 512;
/// Largest supported block alignment.
pub const ALIGNMENT_MAX: u32 = 65536;

const _: () = assert!(SEGMENT_HEADER_LEN == 64);
const _: () = assert!(FRAME_HEADER_LEN == 24);
const _: () = assert!(FRAME_HEADER_LEN % FRAME_ALIGN == 0);
const _: () = assert!(SEGMENT_HEADER_LEN <= ALIGNMENT_MIN as usize);

/// Why bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than a header needs.
    Truncated,
    /// Every byte of the header is zero: preallocated space never written.
    Zeroed,
    /// The segment header does not start with aiowal's magic.
    BadMagic,
    /// A segment header of a format version this build does not know.
    UnsupportedVersion(u32),
    /// A header field holds an impossible value.
    BadField(&'static str),
    /// The checksum does not match the bytes.
    BadChecksum,
    /// The frame kind byte is not a known kind.
    BadKind(u8),
    /// A length field larger than the limit in force.
    TooLong {
        /// The length the bytes claim.
        len: u64,
        /// The limit in force.
        max: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "truncated header"),
            Self::Zeroed => write!(f, "zero bytes (never written)"),
            Self::BadMagic => write!(f, "not an aiowal segment (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Self::BadField(name) => write!(f, "invalid header field `{name}`"),
            Self::BadChecksum => write!(f, "checksum mismatch"),
            Self::BadKind(k) => write!(f, "unknown frame kind {k}"),
            Self::TooLong { len, max } => write!(f, "length {len} exceeds the limit {max}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The fixed fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Block alignment of every write into this segment.
    pub alignment: u32,
    /// Sequence number, also encoded in the file name.
    pub sequence: u64,
    /// LSN of the first frame in the segment.
    pub first_lsn: u64,
    /// Random per-segment value mixed into every frame checksum.
    pub salt: u64,
    /// Preallocated size of the segment file.
    pub segment_bytes: u64,
    /// Most bytes that can be in flight at once while writing this segment.
    pub window_bytes: u64,
    /// Identifies the log: a segment copied in from another log is refused.
    pub log_id: u32,
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, FormatError> {
    let bytes = b.get(at..at + 4).ok_or(FormatError::Truncated)?;
    let arr: [u8; 4] = bytes.try_into().map_err(|_| FormatError::Truncated)?;
    Ok(u32::from_le_bytes(arr))
}

fn read_u64(b: &[u8], at: usize) -> Result<u64, FormatError> {
    let bytes = b.get(at..at + 8).ok_or(FormatError::Truncated)?;
    let arr: [u8; 8] = bytes.try_into().map_err(|_| FormatError::Truncated)?;
    Ok(u64::from_le_bytes(arr))
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl SegmentHeader {
    /// Encodes the header into its 64 bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        put(&mut b, MAGIC_OFFSET, &MAGIC);
        put(&mut b, VERSION_OFFSET, &VERSION.to_le_bytes());
        put(&mut b, ALIGNMENT_OFFSET, &self.alignment.to_le_bytes());
        put(&mut b, SEQUENCE_OFFSET, &self.sequence.to_le_bytes());
        put(&mut b, FIRST_LSN_OFFSET, &self.first_lsn.to_le_bytes());
        put(&mut b, SALT_OFFSET, &self.salt.to_le_bytes());
        put(&mut b, SEGMENT_BYTES_OFFSET, &self.segment_bytes.to_le_bytes());
        put(&mut b, WINDOW_BYTES_OFFSET, &self.window_bytes.to_le_bytes());
        put(&mut b, LOG_ID_OFFSET, &self.log_id.to_le_bytes());
        let crc = crc32fast::hash(b.get(..HEADER_CRC_OFFSET).unwrap_or_default());
        put(&mut b, HEADER_CRC_OFFSET, &crc.to_le_bytes());
        b
    }

    /// Decodes and validates a segment header from the start of `b`.
    ///
    /// # Errors
    /// `Zeroed` for an all-zero header, `BadMagic` for a foreign file, and the
    /// other variants for damaged or impossible headers.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let raw = b.get(..SEGMENT_HEADER_LEN).ok_or(FormatError::Truncated)?;
        if raw.iter().all(|&x| x == 0) {
            return Err(FormatError::Zeroed);
        }
        if raw.get(..8) != Some(&MAGIC[..]) {
            return Err(FormatError::BadMagic);
        }
        let stored = read_u32(raw, HEADER_CRC_OFFSET)?;
        let crc = crc32fast::hash(raw.get(..HEADER_CRC_OFFSET).ok_or(FormatError::Truncated)?);
        if stored != crc {
            return Err(FormatError::BadChecksum);
        }
        let version = read_u32(raw, VERSION_OFFSET)?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let h = Self {
            alignment: read_u32(raw, ALIGNMENT_OFFSET)?,
            sequence: read_u64(raw, SEQUENCE_OFFSET)?,
            first_lsn: read_u64(raw, FIRST_LSN_OFFSET)?,
            salt: read_u64(raw, SALT_OFFSET)?,
            segment_bytes: read_u64(raw, SEGMENT_BYTES_OFFSET)?,
            window_bytes: read_u64(raw, WINDOW_BYTES_OFFSET)?,
            log_id: read_u32(raw, LOG_ID_OFFSET)?,
        };
        if !h.alignment.is_power_of_two() || !(ALIGNMENT_MIN..=ALIGNMENT_MAX).contains(&h.alignment) {
            return Err(FormatError::BadField("alignment"));
        }
        if h.first_lsn == 0 || h.first_lsn > LSN_MAX {
            return Err(FormatError::BadField("first_lsn"));
        }
        if h.segment_bytes < 2 * u64::from(h.alignment) || h.segment_bytes % u64::from(h.alignment) != 0 {
            return Err(FormatError::BadField("segment_bytes"));
        }
        Ok(h)
    }
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A record appended on its own.
    Record = 1,
    /// First record of an atomic batch.
    BatchBegin = 2,
    /// A record inside an atomic batch.
    BatchMiddle = 3,
    /// Last record of an atomic batch; the batch counts only if this is intact.
    BatchEnd = 4,
    /// Filler up to the next block boundary (or to the end of the segment).
    Padding = 5,
}

impl FrameKind {
    /// Parses the kind byte.
    ///
    /// # Errors
    /// `BadKind` for any other byte.
    pub fn from_byte(b: u8) -> Result<Self, FormatError> {
        Ok(match b {
            1 => Self::Record,
            2 => Self::BatchBegin,
            3 => Self::BatchMiddle,
            4 => Self::BatchEnd,
            5 => Self::Padding,
            other => return Err(FormatError::BadKind(other)),
        })
    }
}

/// A decoded frame borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's kind.
    pub kind: FrameKind,
    /// LSN of the record (padding: the next LSN to be used).
    pub lsn: u64,
    /// The record bytes (empty for padding).
    pub payload: &'a [u8],
    /// Bytes from the frame start to where the next frame may start.
    pub len_on_disk: u64,
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: u64, align: u64) -> u64 {
    (n + align - 1) & !(align - 1)
}

/// Bytes a record of `payload_len` bytes takes on disk, header included.
pub const fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + ((payload_len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1))
}

fn frame_crc(salt: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(header_tail);
    h.update(payload);
    h.finalize()
}

fn frame_header(len: u32, lsn: u64, kind: FrameKind) -> [u8; FRAME_HEADER_LEN] {
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    put(&mut hdr, FRAME_LEN_OFFSET, &len.to_le_bytes());
    put(&mut hdr, FRAME_LSN_OFFSET, &lsn.to_le_bytes());
    put(&mut hdr, FRAME_KIND_OFFSET, &[kind as u8]);
    hdr
}

/// Appends one record frame to `out`, which must end at a frame boundary.
///
/// # Errors
/// `TooLong` when the payload does not fit the 32-bit length field.
pub fn encode_frame(
    out: &mut Vec<u8>,
    salt: u64,
    lsn: u64,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), FormatError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| FormatError::TooLong { len: payload.len() as u64, max: u64::from(u32::MAX) })?;
    let mut hdr = frame_header(len, lsn, kind);
    let crc = frame_crc(salt, hdr.get(FRAME_LEN_OFFSET..).unwrap_or_default(), payload);
    put(&mut hdr, FRAME_CRC_OFFSET, &crc.to_le_bytes());
    let start = out.len();
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
    out.resize(start + frame_len(payload.len()), 0);
    debug_assert!(
        decode_frame(out.get(start..).unwrap_or_default(), salt, u64::from(len)).is_ok(),
        "a frame must decode right after it is encoded"
    );
    Ok(())
}

/// The header of a padding frame of `total_len` bytes (header included).
///
/// `total_len` must be a multiple of 8, at least [`FRAME_HEADER_LEN`] and
/// fit the 32-bit length field once the header is subtracted.
///
/// # Errors
/// `BadField` when `total_len` is not a valid padding length.
pub fn padding_header(
    salt: u64,
    next_lsn: u64,
    total_len: u64,
) -> Result<[u8; FRAME_HEADER_LEN], FormatError> {
    let payload = total_len
        .checked_sub(FRAME_HEADER_LEN as u64)
        .filter(|_| total_len % FRAME_ALIGN as u64 == 0)
        .ok_or(FormatError::BadField("padding length"))?;
    let len = u32::try_from(payload).map_err(|_| FormatError::BadField("padding length"))?;
    let mut hdr = frame_header(len, next_lsn, FrameKind::Padding);
    let crc = frame_crc(salt, hdr.get(FRAME_LEN_OFFSET..).unwrap_or_default(), &[]);
    put(&mut hdr, FRAME_CRC_OFFSET, &crc.to_le_bytes());
    Ok(hdr)
}

/// Appends a padding frame of exactly `total_len` bytes: its header, then zeroes.
///
/// # Errors
/// `BadField` when `total_len` is not a valid padding length.
pub fn encode_padding(
    out: &mut Vec<u8>,
    salt: u64,
    next_lsn: u64,
    total_len: u64,
) -> Result<(), FormatError> {
    let hdr = padding_header(salt, next_lsn, total_len)?;
    let total = usize::try_from(total_len).map_err(|_| FormatError::BadField("padding length"))?;
    out.extend_from_slice(&hdr);
    out.resize(out.len() + total - FRAME_HEADER_LEN, 0);
    Ok(())
}

/// Length of the padding frame that takes a batch of `used` bytes (counted
/// from a block boundary) to the next block boundary; 0 if it is already there.
///
/// A gap too small for a frame header is widened by one block.
pub const fn padding_for(used: u64, alignment: u64) -> u64 {
    let gap = align_up(used, alignment) - used;
    if gap == 0 {
        0
    } else if gap < FRAME_HEADER_LEN as u64 {
        gap + alignment
    } else {
        gap
    }
}

/// Decodes the frame at the start of `b` for a segment with `salt`.
///
/// `max_payload` bounds record payloads before anything is trusted; padding
/// frames are bounded only by the bytes given (they may run past the end of
/// `b` to the end of the segment, which the caller checks).
///
/// # Errors
/// `Zeroed` for an all-zero header, `Truncated` when `b` is too short, and the
/// checksum, kind and length errors for damaged frames.
pub fn decode_frame(b: &[u8], salt: u64, max_payload: u64) -> Result<Frame<'_>, FormatError> {
    let hdr = b.get(..FRAME_HEADER_LEN).ok_or(FormatError::Truncated)?;
    if hdr.iter().all(|&x| x == 0) {
        return Err(FormatError::Zeroed);
    }
    let kind = FrameKind::from_byte(*hdr.get(FRAME_KIND_OFFSET).ok_or(FormatError::Truncated)?)?;
    // Reserved bytes are written as zero; anything else is not this format.
    if hdr.get(FRAME_RESERVED_OFFSET..).is_none_or(|r| r.iter().any(|&b| b != 0)) {
        return Err(FormatError::BadField("reserved"));
    }
    let len = read_u32(hdr, FRAME_LEN_OFFSET)?;
    let lsn = read_u64(hdr, FRAME_LSN_OFFSET)?;
    let stored = read_u32(hdr, FRAME_CRC_OFFSET)?;
    let tail = hdr.get(FRAME_LEN_OFFSET..).ok_or(FormatError::Truncated)?;
    if kind == FrameKind::Padding {
        if frame_crc(salt, tail, &[]) != stored {
            return Err(FormatError::BadChecksum);
        }
        if u64::from(len) % FRAME_ALIGN as u64 != 0 {
            return Err(FormatError::BadField("padding length"));
        }
        return Ok(Frame { kind, lsn, payload: &[], len_on_disk: FRAME_HEADER_LEN as u64 + u64::from(len) });
    }
    if u64::from(len) > max_payload {
        return Err(FormatError::TooLong { len: u64::from(len), max: max_payload });
    }
    let plen = usize::try_from(len).map_err(|_| FormatError::Truncated)?;
    let payload = b.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + plen).ok_or(FormatError::Truncated)?;
    if frame_crc(salt, tail, payload) != stored {
        return Err(FormatError::BadChecksum);
    }
    if lsn == 0 {
        return Err(FormatError::BadField("lsn"));
    }
    Ok(Frame { kind, lsn, payload, len_on_disk: frame_len(plen) as u64 })
}

#[cfg(test)]
mod tests;
