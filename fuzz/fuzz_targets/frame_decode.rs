//! Frame and segment-header decoding on arbitrary bytes: no panic, no
//! allocation driven by length fields, and anything that decodes re-encodes
//! to the same bytes. Compressed records payloads decompress or fail with
//! a typed error.
#![no_main]

use aiowal::format::{self, FrameKind, SegmentHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (salt, rest) = match data.split_first_chunk::<8>() {
        Some((s, r)) => (u64::from_le_bytes(*s), r),
        None => (0, data),
    };
    if let Ok(h) = SegmentHeader::decode(rest) {
        assert_eq!(&h.encode()[..], &rest[..format::SEGMENT_HEADER_LEN]);
    }
    if let Ok(f) = format::decode_frame(rest, salt, 1 << 16) {
        if f.kind != FrameKind::Padding {
            let mut out = Vec::new();
            format::encode_frame(&mut out, salt, f.lsn, f.kind, f.payload).unwrap();
            assert_eq!(out.len() as u64, f.len_on_disk);
            assert_eq!(&out[..format::FRAME_HEADER_LEN + f.payload.len()], &rest[..format::FRAME_HEADER_LEN + f.payload.len()]);
        }
    }
    if let Ok(frames) = format::decompress_frames(rest, 1 << 16) {
        assert!(frames.len() <= 1 << 16);
    }
});
