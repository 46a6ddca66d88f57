//! The on-disk format: a pure codec, bytes in and values out, no I/O.
//!
//! Not part of the crate's stable API: it is public (and hidden from the
//! docs) for aiowal's own tools, fuzz targets and tests. It follows the
//! on-disk format's version, not the crate's, and may change in any
//! release.
//!
//! A log is a directory of segment files. Every segment starts with a header
//! block (`alignment` bytes, normally 4096) followed by write batches. Every
//! batch starts on a fresh block with a batch header frame, holds record
//! frames, and is zero-filled to the next block boundary, so no write ever
//! touches a block that holds acknowledged data.
//!
//! ```text
//! Segment header (first 64 bytes of block 0; the rest of the block is zero)
//!  offset size field
//!       0    8 magic            b"AIOWALsg"
//!       8    4 version          u32 LE: 2 (this build also reads 1)
//!      12    4 alignment        u32 LE, power of two, 512..=65536
//!      16    8 sequence         u64 LE, equals the number in the file name
//!      24    8 first_lsn        u64 LE, LSN of the first record in the segment
//!      32    8 salt             u64 LE, random per segment
//!      40    8 segment_bytes    u64 LE, preallocated size of the file
//!      48    4 flags            u32 LE, see below (v1: low half of window_bytes)
//!      52    4 record_bytes_max u32 LE, the writer's max_record_bytes (v1: high half of window_bytes)
//!      56    4 log_id           u32 LE, random per log, the same in all its segments
//!      60    4 header_crc       u32 LE, CRC32 of bytes 0..60
//!
//! Segment flags
//!   bit 0 CUTS       records of earlier segments with LSN >= first_lsn are void
//!                    (written when open copies uncertain records forward, see
//!                    `recovery`); without it, first_lsn must continue exactly
//!   bit 1 COMPRESSED batches may be compressed (see below); a build
//!                    without the `compression` feature refuses the segment
//!   a flag this build does not know makes it refuse the segment; a writer
//!   that uses a batch flag or frame kind this build does not know sets the
//!   matching segment flag, so an older reader refuses the segment instead
//!   of taking the batch for damage
//!
//! Frame (24-byte header, payload, zeroes up to the next multiple of 8)
//!  offset size field
//!       0    4 crc            u32 LE, CRC32 of salt (8 bytes LE) ++ bytes 4..24 ++ payload
//!                             (v1 padding frames: the payload is not covered)
//!       4    4 len            u32 LE, payload length in bytes
//!       8    8 lsn            u64 LE; a batch header: the batch's first LSN
//!      16    1 kind           1 record, 2 batch begin, 3 batch middle, 4 batch end,
//!                             5 padding (v1 only), 6 batch header (v2 only),
//!                             7 compressed records (v2 only, see below)
//!      17    7 reserved       zero
//!      24  len payload
//!
//! Batch header payload (32 bytes; the frame is 56 bytes)
//!  offset size field
//!       0    8 end_lsn        u64 LE, LSN after the batch's last record
//!                             (equals the frame's LSN for a batch of none)
//!       8    8 synced_lsn     u64 LE, every LSN <= it was durable (written and
//!                             synced) when the batch was submitted
//!      16    8 acked_lsn      u64 LE, every LSN <= it had been acknowledged when
//!                             the batch was submitted (>= synced_lsn)
//!      24    4 batch_bytes    u32 LE, from this frame to the batch's end: a
//!                             whole number of blocks
//!      28    4 flags          u32 LE, bit 0 CLEAN_END: written by `close` after
//!                             every record before it was durable;
//!                             bit 1 COMPRESSED: the batch's record frames
//!                             are stored compressed (below)
//!
//! Compressed records frame (kind 7), the only frame after the header of a
//! COMPRESSED batch; its LSN is the batch's first
//!  offset size field
//!       0    1 codec          1: LZ4 block format
//!       1    3 reserved       zero
//!       4    4 raw_len        u32 LE, bytes once decompressed
//!       8    .. compressed    the record frames the batch would hold
//!                             uncompressed, exactly (with their own
//!                             headers and checksums), compressed
//! ```
//!
//! A writer compresses a batch only when that saves at least one block,
//! and only in a segment whose header has the COMPRESSED flag. Seek marks
//! (LSN, offset) name batch starts, compressed or not.
//!
//! A single record is one `Record` frame. An atomic batch of n >= 2 records is
//! `BatchBegin`, n-2 `BatchMiddle` and `BatchEnd` frames with consecutive LSNs;
//! recovery yields its records only when the `BatchEnd` frame is intact. A
//! write batch holds any number of those, after its batch header.
//!
//! The salt in every frame's checksum makes bytes left over from an earlier
//! incarnation of the file (a recycled segment) fail the check, and the LSN
//! must continue the sequence exactly. The batch header's watermarks are
//! what recovery uses as proof that earlier records were acknowledged.
//!
//! Format v1 (read, never written) had no batch header: each batch ended
//! with a padding frame (kind 5) up to the block boundary, and bytes 48..56
//! of the segment header held `window_bytes`, the most bytes ever in flight.

#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::fmt;

/// Identifies a segment file: "AIOWAL" + "sg".
pub const MAGIC: [u8; 8] = *b"AIOWALsg";
/// The format version this build writes.
pub const VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const VERSION_MIN: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const ALIGNMENT_OFFSET: usize = VERSION_OFFSET + 4;
const SEQUENCE_OFFSET: usize = ALIGNMENT_OFFSET + 4;
const FIRST_LSN_OFFSET: usize = SEQUENCE_OFFSET + 8;
const SALT_OFFSET: usize = FIRST_LSN_OFFSET + 8;
const SEGMENT_BYTES_OFFSET: usize = SALT_OFFSET + 8;
const FLAGS_OFFSET: usize = SEGMENT_BYTES_OFFSET + 8;
const RECORD_BYTES_MAX_OFFSET: usize = FLAGS_OFFSET + 4;
/// v1 kept `window_bytes` (u64) where v2 keeps `flags` and `record_bytes_max`.
const WINDOW_BYTES_OFFSET_V1: usize = FLAGS_OFFSET;
const LOG_ID_OFFSET: usize = RECORD_BYTES_MAX_OFFSET + 4;
const HEADER_CRC_OFFSET: usize = LOG_ID_OFFSET + 4;
/// Bytes of the segment header that carry information.
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC_OFFSET + 4;
/// Where the salt sits in every version's header (recovery reads it from
/// a header whose checksum fails, to tell a torn header from a damaged one).
pub const SALT_RANGE: std::ops::Range<usize> = SALT_OFFSET..SALT_OFFSET + 8;

/// Segment flag: records of earlier segments with LSN `>= first_lsn` are void.
pub const SEGMENT_CUTS: u32 = 1;
/// Segment flag: batches may be compressed.
pub const SEGMENT_COMPRESSED: u32 = 1 << 1;
/// Every segment flag this build understands (compressed segments only
/// with the `compression` feature).
const SEGMENT_FLAGS_KNOWN: u32 =
    if cfg!(feature = "compression") { SEGMENT_CUTS | SEGMENT_COMPRESSED } else { SEGMENT_CUTS };

const FRAME_CRC_OFFSET: usize = 0;
const FRAME_LEN_OFFSET: usize = FRAME_CRC_OFFSET + 4;
const FRAME_LSN_OFFSET: usize = FRAME_LEN_OFFSET + 4;
const FRAME_KIND_OFFSET: usize = FRAME_LSN_OFFSET + 8;
const FRAME_RESERVED_OFFSET: usize = FRAME_KIND_OFFSET + 1;
/// Length of a frame header; payloads follow it.
pub const FRAME_HEADER_LEN: usize = FRAME_RESERVED_OFFSET + 7;
/// Every frame starts at a multiple of this.
pub const FRAME_ALIGN: usize = 8;

const BATCH_END_LSN_OFFSET: usize = 0;
const BATCH_SYNCED_OFFSET: usize = BATCH_END_LSN_OFFSET + 8;
const BATCH_ACKED_OFFSET: usize = BATCH_SYNCED_OFFSET + 8;
const BATCH_BYTES_OFFSET: usize = BATCH_ACKED_OFFSET + 8;
const BATCH_FLAGS_OFFSET: usize = BATCH_BYTES_OFFSET + 4;
/// Payload bytes of a batch header frame.
pub const BATCH_BODY_LEN: usize = BATCH_FLAGS_OFFSET + 4;
/// Bytes of a batch header frame, header included.
pub const BATCH_HEADER_LEN: usize = FRAME_HEADER_LEN + BATCH_BODY_LEN;

/// Batch flag: `close` wrote this batch after every earlier record was durable.
pub const BATCH_CLEAN_END: u32 = 1;
/// Batch flag: the batch's record frames are stored in one compressed frame.
pub const BATCH_COMPRESSED: u32 = 1 << 1;
const BATCH_FLAGS_KNOWN: u32 = BATCH_CLEAN_END | BATCH_COMPRESSED;

/// Codec byte of a compressed records frame: the LZ4 block format.
pub const CODEC_LZ4: u8 = 1;
/// Bytes before the compressed data in a compressed records frame.
pub const COMPRESSED_PREFIX_LEN: usize = 8;
/// LZ4 expands at most this many times (a match of 255+ bytes per byte,
/// with margin): a larger `raw_len` claim is not LZ4's.
const LZ4_RATIO_MAX: u64 = 256;

/// A segment file that was prepared but never written is zero in its first
/// this many bytes (or all of it, if smaller): its header block and where
/// its first batch would be, at any alignment. Preparation zero-fills them
/// (a recycled file too); recovery tells a never-written file by them.
pub const UNWRITTEN_PREFIX_BYTES: usize = 2 * ALIGNMENT_MAX as usize;

/// Largest LSN a segment may start at: far beyond any real log, and far
/// enough below `u64::MAX` that LSN arithmetic cannot overflow.
pub const LSN_MAX: u64 = 1 << 62;

/// Smallest and largest supported block alignment.
pub const ALIGNMENT_MIN: u32 = 512;
/// Largest supported block alignment.
pub const ALIGNMENT_MAX: u32 = 65536;

const _: () = assert!(SEGMENT_HEADER_LEN == 64);
const _: () = assert!(FRAME_HEADER_LEN == 24);
const _: () = assert!(BATCH_HEADER_LEN == 56);
const _: () = assert!(FRAME_HEADER_LEN % FRAME_ALIGN == 0);
const _: () = assert!(BATCH_HEADER_LEN % FRAME_ALIGN == 0);
const _: () = assert!(SEGMENT_HEADER_LEN <= ALIGNMENT_MIN as usize);
const _: () = assert!(BATCH_HEADER_LEN <= ALIGNMENT_MIN as usize);

/// Why bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than a header needs.
    Truncated,
    /// Every byte of the header is zero: preallocated space never written.
    Zeroed,
    /// The segment header does not start with aiowal's magic.
    BadMagic,
    /// A segment header of a format version this build does not know.
    UnsupportedVersion(u32),
    /// A segment header with a flag this build does not know.
    UnsupportedFlags(u32),
    /// A header field holds an impossible value.
    BadField(&'static str),
    /// The checksum does not match the bytes.
    BadChecksum,
    /// The frame kind byte is not a known kind.
    BadKind(u8),
    /// A compressed records frame of a codec this build does not know.
    UnsupportedCodec(u8),
    /// Compressed bytes that do not decompress to the length they claim.
    Decompress,
    /// A length field larger than the bytes that can hold it.
    TooLong {
        /// The length the bytes claim.
        len: u64,
        /// The most there is room for.
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
            Self::UnsupportedFlags(v) => write!(f, "unsupported segment flags {v:#x}"),
            Self::BadField(name) => write!(f, "invalid header field `{name}`"),
            Self::BadChecksum => write!(f, "checksum mismatch"),
            Self::BadKind(k) => write!(f, "unknown frame kind {k}"),
            Self::UnsupportedCodec(c) => write!(f, "compressed with unknown codec {c}"),
            Self::Decompress => write!(f, "compressed records do not decompress"),
            Self::TooLong { len, max } => write!(f, "length {len} exceeds the {max} bytes there is room for"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The fixed fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written in (1 or 2).
    pub version: u32,
    /// Block alignment of every write into this segment.
    pub alignment: u32,
    /// Sequence number, also encoded in the file name.
    pub sequence: u64,
    /// LSN of the first record in the segment.
    pub first_lsn: u64,
    /// Random per-segment value mixed into every frame checksum.
    pub salt: u64,
    /// Preallocated size of the segment file.
    pub segment_bytes: u64,
    /// Segment flags ([`SEGMENT_CUTS`]); 0 in v1.
    pub flags: u32,
    /// The writer's `max_record_bytes` (information only: a frame whose
    /// checksum holds is a record, whatever this says); 0 in v1.
    pub record_bytes_max: u32,
    /// v1 only: the most bytes in flight at once (the torn-tail window); 0 in v2.
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
    /// Whether this segment voids records of earlier segments from its first LSN on.
    pub fn cuts(&self) -> bool {
        self.flags & SEGMENT_CUTS != 0
    }

    /// Encodes the header into its 64 bytes, in this header's `version`
    /// (2, or 1 for tests of the upgrade path).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        put(&mut b, MAGIC_OFFSET, &MAGIC);
        put(&mut b, VERSION_OFFSET, &self.version.to_le_bytes());
        put(&mut b, ALIGNMENT_OFFSET, &self.alignment.to_le_bytes());
        put(&mut b, SEQUENCE_OFFSET, &self.sequence.to_le_bytes());
        put(&mut b, FIRST_LSN_OFFSET, &self.first_lsn.to_le_bytes());
        put(&mut b, SALT_OFFSET, &self.salt.to_le_bytes());
        put(&mut b, SEGMENT_BYTES_OFFSET, &self.segment_bytes.to_le_bytes());
        if self.version == 1 {
            put(&mut b, WINDOW_BYTES_OFFSET_V1, &self.window_bytes.to_le_bytes());
        } else {
            put(&mut b, FLAGS_OFFSET, &self.flags.to_le_bytes());
            put(&mut b, RECORD_BYTES_MAX_OFFSET, &self.record_bytes_max.to_le_bytes());
        }
        put(&mut b, LOG_ID_OFFSET, &self.log_id.to_le_bytes());
        let crc = crc32fast::hash(b.get(..HEADER_CRC_OFFSET).unwrap_or_default());
        put(&mut b, HEADER_CRC_OFFSET, &crc.to_le_bytes());
        b
    }

    /// Decodes and validates a segment header from the start of `b`.
    ///
    /// # Errors
    /// `Zeroed` for an all-zero header, `BadMagic` for a foreign file,
    /// `UnsupportedVersion` / `UnsupportedFlags` for a newer format, and the
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
        let version = read_u32(raw, VERSION_OFFSET)?;
        if stored != crc {
            // A newer format may keep its checksum elsewhere: refuse it as
            // newer (nothing is touched) rather than call it damaged.
            return Err(if version > VERSION && version < 1 << 16 {
                FormatError::UnsupportedVersion(version)
            } else {
                FormatError::BadChecksum
            });
        }
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let v1 = version == 1;
        let h = Self {
            version,
            alignment: read_u32(raw, ALIGNMENT_OFFSET)?,
            sequence: read_u64(raw, SEQUENCE_OFFSET)?,
            first_lsn: read_u64(raw, FIRST_LSN_OFFSET)?,
            salt: read_u64(raw, SALT_OFFSET)?,
            segment_bytes: read_u64(raw, SEGMENT_BYTES_OFFSET)?,
            flags: if v1 { 0 } else { read_u32(raw, FLAGS_OFFSET)? },
            record_bytes_max: if v1 { 0 } else { read_u32(raw, RECORD_BYTES_MAX_OFFSET)? },
            window_bytes: if v1 { read_u64(raw, WINDOW_BYTES_OFFSET_V1)? } else { 0 },
            log_id: read_u32(raw, LOG_ID_OFFSET)?,
        };
        if h.flags & !SEGMENT_FLAGS_KNOWN != 0 {
            return Err(FormatError::UnsupportedFlags(h.flags));
        }
        if !h.alignment.is_power_of_two() || !(ALIGNMENT_MIN..=ALIGNMENT_MAX).contains(&h.alignment) {
            return Err(FormatError::BadField("alignment"));
        }
        if h.first_lsn == 0 || h.first_lsn > LSN_MAX {
            return Err(FormatError::BadField("first_lsn"));
        }
        if h.segment_bytes < 2 * u64::from(h.alignment)
            || h.segment_bytes % u64::from(h.alignment) != 0
            || h.segment_bytes > u64::from(u32::MAX)
        {
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
    /// v1 only: filler up to the next block boundary (or to the segment's end).
    Padding = 5,
    /// v2 only: the first frame of every write batch ([`BatchHeader`]).
    BatchHeader = 6,
    /// v2 only: a compressed batch's record frames, compressed.
    Compressed = 7,
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
            6 => Self::BatchHeader,
            7 => Self::Compressed,
            other => return Err(FormatError::BadKind(other)),
        })
    }

    /// Whether a frame of this kind carries a record.
    pub fn is_record(self) -> bool {
        matches!(self, Self::Record | Self::BatchBegin | Self::BatchMiddle | Self::BatchEnd)
    }

    /// Whether a record frame of this kind may follow one of `prev` (`None`:
    /// nothing before, or a completed record or atomic batch).
    pub fn follows(self, inside_atomic: bool) -> bool {
        matches!(
            (self, inside_atomic),
            (Self::Record | Self::BatchBegin, false) | (Self::BatchMiddle | Self::BatchEnd, true)
        )
    }

    /// Whether a record of this kind leaves an atomic batch open.
    pub fn opens_atomic(self) -> bool {
        matches!(self, Self::BatchBegin | Self::BatchMiddle)
    }
}

/// A decoded frame borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's kind.
    pub kind: FrameKind,
    /// LSN of the record (v1 padding: the next LSN to be used; a batch
    /// header: the batch's first LSN).
    pub lsn: u64,
    /// The record bytes (a batch header's body; empty for padding).
    pub payload: &'a [u8],
    /// Bytes from the frame start to where the next frame may start.
    pub len_on_disk: u64,
}

/// The first frame of every v2 write batch: where the batch ends and the
/// watermarks its writer knew when it submitted the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// LSN of the batch's first record (the frame's LSN).
    pub first_lsn: u64,
    /// LSN after its last record (`first_lsn` for a batch of none).
    pub end_lsn: u64,
    /// Every LSN up to this one was durable when the batch was submitted.
    pub synced_lsn: u64,
    /// Every LSN up to this one had been acknowledged when the batch was
    /// submitted (equals `synced_lsn` unless acknowledgements precede syncs).
    pub acked_lsn: u64,
    /// Bytes from the batch header to the batch's end.
    pub batch_bytes: u32,
    /// Batch flags ([`BATCH_CLEAN_END`]).
    pub flags: u32,
}

impl BatchHeader {
    /// Whether `close` wrote this batch after everything before it was durable.
    pub fn clean_end(&self) -> bool {
        self.flags & BATCH_CLEAN_END != 0
    }

    /// Whether the batch's record frames are stored compressed.
    pub fn compressed(&self) -> bool {
        self.flags & BATCH_COMPRESSED != 0
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.end_lsn - self.first_lsn
    }

    /// Encodes the header frame for a segment with `salt`.
    pub fn encode(&self, salt: u64) -> [u8; BATCH_HEADER_LEN] {
        let mut body = [0u8; BATCH_BODY_LEN];
        put(&mut body, BATCH_END_LSN_OFFSET, &self.end_lsn.to_le_bytes());
        put(&mut body, BATCH_SYNCED_OFFSET, &self.synced_lsn.to_le_bytes());
        put(&mut body, BATCH_ACKED_OFFSET, &self.acked_lsn.to_le_bytes());
        put(&mut body, BATCH_BYTES_OFFSET, &self.batch_bytes.to_le_bytes());
        put(&mut body, BATCH_FLAGS_OFFSET, &self.flags.to_le_bytes());
        let len = BATCH_BODY_LEN as u32;
        let mut hdr = frame_header(len, self.first_lsn, FrameKind::BatchHeader);
        let crc = frame_crc(salt, hdr.get(FRAME_LEN_OFFSET..).unwrap_or_default(), &body);
        put(&mut hdr, FRAME_CRC_OFFSET, &crc.to_le_bytes());
        let mut out = [0u8; BATCH_HEADER_LEN];
        put(&mut out, 0, &hdr);
        put(&mut out, FRAME_HEADER_LEN, &body);
        debug_assert!(
            decode_frame(&out, salt, BATCH_BODY_LEN as u64).and_then(|f| BatchHeader::from_frame(&f))
                == Ok(*self),
            "a batch header must decode right after it is encoded"
        );
        out
    }

    /// The batch header a decoded frame holds.
    ///
    /// # Errors
    /// `BadKind` for another kind of frame, `BadField` for impossible values.
    pub fn from_frame(f: &Frame<'_>) -> Result<BatchHeader, FormatError> {
        if f.kind != FrameKind::BatchHeader {
            return Err(FormatError::BadKind(f.kind as u8));
        }
        if f.payload.len() != BATCH_BODY_LEN {
            return Err(FormatError::BadField("batch header length"));
        }
        let h = BatchHeader {
            first_lsn: f.lsn,
            end_lsn: read_u64(f.payload, BATCH_END_LSN_OFFSET)?,
            synced_lsn: read_u64(f.payload, BATCH_SYNCED_OFFSET)?,
            acked_lsn: read_u64(f.payload, BATCH_ACKED_OFFSET)?,
            batch_bytes: read_u32(f.payload, BATCH_BYTES_OFFSET)?,
            flags: read_u32(f.payload, BATCH_FLAGS_OFFSET)?,
        };
        if h.end_lsn < h.first_lsn || h.end_lsn > LSN_MAX {
            return Err(FormatError::BadField("end_lsn"));
        }
        // Stamped when the batch was submitted: nothing of it was durable yet.
        if h.synced_lsn >= h.first_lsn || h.acked_lsn >= h.first_lsn || h.synced_lsn > h.acked_lsn {
            return Err(FormatError::BadField("watermark"));
        }
        if (h.batch_bytes as usize) < BATCH_HEADER_LEN {
            return Err(FormatError::BadField("batch_bytes"));
        }
        if h.flags & !BATCH_FLAGS_KNOWN != 0 {
            return Err(FormatError::BadField("batch flags"));
        }
        Ok(h)
    }
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
/// `TooLong` when the payload does not fit the 32-bit length field; `out`
/// is then unchanged.
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

/// The header of a v1 padding frame of `total_len` bytes (header included).
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

/// Decodes the frame at the start of `b` for a segment with `salt`.
///
/// `max_payload` bounds payloads before anything is trusted: the bytes left
/// in the segment (the record limit of the day is not a recovery criterion:
/// a frame whose checksum holds is a record). v1 padding frames are bounded
/// only by the bytes given (they may run past the end of `b` to the end of
/// the segment, which the caller checks).
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

/// Compresses `frames` (a batch's record frames) into the payload of a
/// compressed records frame, appended to `out`; returns false (and leaves
/// `out` as it was) when the frames do not shrink or are too large.
#[cfg(feature = "compression")]
pub fn compress_frames(frames: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(raw_len) = u32::try_from(frames.len()) else { return false };
    let mark = out.len();
    let bound = lz4_flex::block::get_maximum_output_size(frames.len());
    out.extend_from_slice(&[CODEC_LZ4, 0, 0, 0]);
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.resize(mark + COMPRESSED_PREFIX_LEN + bound, 0);
    let dst = out.get_mut(mark + COMPRESSED_PREFIX_LEN..).unwrap_or_default();
    match lz4_flex::block::compress_into(frames, dst) {
        Ok(n) if n < frames.len() => {
            out.truncate(mark + COMPRESSED_PREFIX_LEN + n);
            true
        }
        _ => {
            out.truncate(mark);
            false
        }
    }
}

/// Decompresses the payload of a compressed records frame: the record
/// frames it holds. `max_raw` bounds the claimed length before anything is
/// allocated: a writer compresses a batch only where its record frames,
/// uncompressed, fit between the frame and the segment's end, so readers
/// pass that room.
///
/// # Errors
/// `UnsupportedCodec` for a codec this build does not know (or any codec,
/// without the `compression` feature), `TooLong` for a claim above
/// `max_raw` or above what LZ4 can expand to, `Decompress` for bytes that
/// do not decompress to exactly the claimed length.
pub fn decompress_frames(payload: &[u8], max_raw: u64) -> Result<Vec<u8>, FormatError> {
    let prefix = payload.get(..COMPRESSED_PREFIX_LEN).ok_or(FormatError::Truncated)?;
    let codec = *prefix.first().ok_or(FormatError::Truncated)?;
    if codec != CODEC_LZ4 || !cfg!(feature = "compression") {
        return Err(FormatError::UnsupportedCodec(codec));
    }
    if prefix.get(1..4).is_none_or(|r| r.iter().any(|&b| b != 0)) {
        return Err(FormatError::BadField("reserved"));
    }
    let raw_len = read_u32(prefix, 4)?;
    let data = payload.get(COMPRESSED_PREFIX_LEN..).unwrap_or_default();
    let max = max_raw.min((data.len() as u64 + 1) * LZ4_RATIO_MAX);
    if u64::from(raw_len) > max {
        return Err(FormatError::TooLong { len: u64::from(raw_len), max });
    }
    decompress_lz4(data, raw_len as usize)
}

#[cfg(feature = "compression")]
fn decompress_lz4(data: &[u8], raw_len: usize) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![0u8; raw_len];
    match lz4_flex::block::decompress_into(data, &mut out) {
        Ok(n) if n == raw_len => Ok(out),
        _ => Err(FormatError::Decompress),
    }
}

#[cfg(not(feature = "compression"))]
fn decompress_lz4(_: &[u8], _: usize) -> Result<Vec<u8>, FormatError> {
    Err(FormatError::UnsupportedCodec(CODEC_LZ4))
}

#[cfg(test)]
mod tests;
