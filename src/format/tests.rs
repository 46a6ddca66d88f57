#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn header(version: u32) -> SegmentHeader {
    SegmentHeader {
        version,
        alignment: 4096,
        sequence: 0x0102_0304_0506_0708,
        first_lsn: 42,
        salt: 0xAABB_CCDD_EEFF_0011,
        segment_bytes: 1 << 20,
        flags: if version == 1 { 0 } else { SEGMENT_CUTS },
        record_bytes_max: if version == 1 { 0 } else { 0x1234 },
        window_bytes: if version == 1 { 1 << 16 } else { 0 },
        log_id: 0xDEAD_BEEF,
    }
}

/// The diagram in the module docs, byte for byte: if a constant moves, this fails.
#[test]
fn segment_header_matches_diagram() {
    let h = header(2);
    let b = h.encode();
    let mut want = Vec::new();
    want.extend_from_slice(b"AIOWALsg");
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&4096u32.to_le_bytes());
    want.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    want.extend_from_slice(&42u64.to_le_bytes());
    want.extend_from_slice(&0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
    want.extend_from_slice(&(1u64 << 20).to_le_bytes());
    want.extend_from_slice(&1u32.to_le_bytes()); // flags: CUTS
    want.extend_from_slice(&0x1234u32.to_le_bytes()); // record_bytes_max
    want.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    let crc = crc32fast::hash(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(&b[..], &want[..]);
    assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
    assert_eq!(&b[SALT_RANGE], &0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
}

/// v1 headers (read, for logs written before v2) keep `window_bytes` where
/// v2 keeps flags and the record limit.
#[test]
fn v1_header_decodes() {
    let h = header(1);
    let b = h.encode();
    assert_eq!(&b[48..56], &(1u64 << 16).to_le_bytes());
    let back = SegmentHeader::decode(&b).unwrap();
    assert_eq!(back, h);
    assert!(!back.cuts());
}

#[test]
fn newer_versions_and_unknown_flags_are_refused() {
    let mut h = header(2);
    h.flags = 1 << 2;
    assert_eq!(SegmentHeader::decode(&h.encode()), Err(FormatError::UnsupportedFlags(1 << 2)));
    h.flags = SEGMENT_COMPRESSED;
    if cfg!(feature = "compression") {
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    } else {
        // Without the codec a compressed segment is refused, not misread.
        assert_eq!(
            SegmentHeader::decode(&h.encode()),
            Err(FormatError::UnsupportedFlags(SEGMENT_COMPRESSED))
        );
    }
    h.flags = 0;
    h.version = 3;
    assert_eq!(SegmentHeader::decode(&h.encode()), Err(FormatError::UnsupportedVersion(3)));
    // A newer format whose checksum sits elsewhere: refused as newer, not damaged.
    let mut b = h.encode();
    b[60] ^= 0xff;
    assert_eq!(SegmentHeader::decode(&b), Err(FormatError::UnsupportedVersion(3)));
}

#[test]
fn batch_header_matches_diagram() {
    let bh = BatchHeader {
        first_lsn: 10,
        end_lsn: 13,
        synced_lsn: 7,
        acked_lsn: 8,
        batch_bytes: 8192,
        flags: BATCH_CLEAN_END,
    };
    let b = bh.encode(5);
    let mut tail = Vec::new();
    tail.extend_from_slice(&32u32.to_le_bytes());
    tail.extend_from_slice(&10u64.to_le_bytes());
    tail.push(6);
    tail.extend_from_slice(&[0; 7]);
    let mut body = Vec::new();
    body.extend_from_slice(&13u64.to_le_bytes());
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&8u64.to_le_bytes());
    body.extend_from_slice(&8192u32.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&5u64.to_le_bytes());
    h.update(&tail);
    h.update(&body);
    let mut want = h.finalize().to_le_bytes().to_vec();
    want.extend_from_slice(&tail);
    want.extend_from_slice(&body);
    assert_eq!(&b[..], &want[..]);
    let f = decode_frame(&b, 5, BATCH_BODY_LEN as u64).unwrap();
    assert_eq!(BatchHeader::from_frame(&f).unwrap(), bh);
    assert_eq!(f.len_on_disk, BATCH_HEADER_LEN as u64);
}

#[test]
fn batch_header_rejects_impossible_watermarks() {
    let good =
        BatchHeader { first_lsn: 10, end_lsn: 12, synced_lsn: 9, acked_lsn: 9, batch_bytes: 512, flags: 0 };
    // Encodes `bh` as a writer never would (encode asserts validity in
    // debug builds): the body patched in, the checksum recomputed.
    let decode = |bh: BatchHeader| {
        let mut b = good.encode(1);
        let body = &mut b[FRAME_HEADER_LEN..];
        body[0..8].copy_from_slice(&bh.end_lsn.to_le_bytes());
        body[8..16].copy_from_slice(&bh.synced_lsn.to_le_bytes());
        body[16..24].copy_from_slice(&bh.acked_lsn.to_le_bytes());
        body[24..28].copy_from_slice(&bh.batch_bytes.to_le_bytes());
        body[28..32].copy_from_slice(&bh.flags.to_le_bytes());
        let crc = frame_crc(1, &b[4..24], &b[24..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        let f = decode_frame(&b, 1, 64).unwrap();
        BatchHeader::from_frame(&f)
    };
    assert_eq!(decode(good), Ok(good));
    assert!(
        decode(BatchHeader { synced_lsn: 10, acked_lsn: 10, ..good }).is_err(),
        "synced before submission"
    );
    assert!(decode(BatchHeader { synced_lsn: 9, acked_lsn: 8, ..good }).is_err(), "acked below synced");
    assert!(decode(BatchHeader { end_lsn: 9, ..good }).is_err());
    assert!(decode(BatchHeader { batch_bytes: 40, ..good }).is_err());
    assert!(decode(BatchHeader { flags: 1 << 2, ..good }).is_err());
}

#[test]
fn frame_matches_diagram() {
    let mut out = Vec::new();
    encode_frame(&mut out, 7, 9, FrameKind::Record, b"hello").unwrap();
    assert_eq!(out.len(), 24 + 8);
    let mut tail = Vec::new();
    tail.extend_from_slice(&5u32.to_le_bytes());
    tail.extend_from_slice(&9u64.to_le_bytes());
    tail.push(1);
    tail.extend_from_slice(&[0; 7]);
    let mut h = crc32fast::Hasher::new();
    h.update(&7u64.to_le_bytes());
    h.update(&tail);
    h.update(b"hello");
    let mut want = h.finalize().to_le_bytes().to_vec();
    want.extend_from_slice(&tail);
    want.extend_from_slice(b"hello\0\0\0");
    assert_eq!(out, want);
}

#[test]
fn header_rejects_zeroes_foreign_and_damage() {
    assert_eq!(SegmentHeader::decode(&[0; 64]), Err(FormatError::Zeroed));
    assert_eq!(SegmentHeader::decode(&[1; 10]), Err(FormatError::Truncated));
    let mut foreign = [0u8; 64];
    foreign[..8].copy_from_slice(b"SQLite f");
    assert_eq!(SegmentHeader::decode(&foreign), Err(FormatError::BadMagic));
    for version in [1, 2] {
        let good = header(version).encode();
        for byte in 8..64 {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert!(SegmentHeader::decode(&b).is_err(), "v{version}: flip {byte}:{bit} undetected");
            }
        }
    }
}

#[test]
fn v1_padding_decodes() {
    let mut out = vec![0u8; 4000];
    out.extend_from_slice(&padding_header(1, 5, 96).unwrap());
    out.resize(4096, 0);
    let f = decode_frame(&out[4000..], 1, 0).unwrap();
    assert_eq!((f.kind, f.lsn, f.len_on_disk), (FrameKind::Padding, 5, 96));
    assert!(padding_header(1, 5, 20).is_err());
    assert!(padding_header(1, 5, 25).is_err());
}

#[test]
fn oversized_length_rejected_before_reading_payload() {
    let mut out = Vec::new();
    encode_frame(&mut out, 1, 1, FrameKind::Record, &[7; 100]).unwrap();
    assert_eq!(decode_frame(&out, 1, 99), Err(FormatError::TooLong { len: 100, max: 99 }));
    // A hostile length field far beyond the buffer is refused without allocating.
    out[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_frame(&out, 1, u64::from(u32::MAX)).is_err());
}

#[test]
fn wrong_salt_fails() {
    let mut out = Vec::new();
    encode_frame(&mut out, 1, 1, FrameKind::Record, b"x").unwrap();
    assert_eq!(decode_frame(&out, 2, 10), Err(FormatError::BadChecksum));
}

proptest! {
    #[test]
    fn frame_round_trip(salt: u64, lsn in 1u64.., kind in 1u8..=4,
                        payload in proptest::collection::vec(any::<u8>(), 0..600)) {
        let kind = FrameKind::from_byte(kind).unwrap();
        let mut out = Vec::new();
        encode_frame(&mut out, salt, lsn, kind, &payload).unwrap();
        prop_assert_eq!(out.len(), frame_len(payload.len()));
        prop_assert_eq!(out.len() % FRAME_ALIGN, 0);
        let f = decode_frame(&out, salt, 600).unwrap();
        prop_assert_eq!(f.kind, kind);
        prop_assert_eq!(f.lsn, lsn);
        prop_assert_eq!(f.payload, &payload[..]);
        prop_assert_eq!(f.len_on_disk, out.len() as u64);
    }

    #[test]
    fn every_bit_flip_detected(salt: u64, lsn in 1u64..1_000_000,
                               payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        encode_frame(&mut out, salt, lsn, FrameKind::Record, &payload).unwrap();
        let covered = FRAME_HEADER_LEN + payload.len();
        for byte in 0..covered {
            for bit in 0..8 {
                let mut b = out.clone();
                b[byte] ^= 1 << bit;
                match decode_frame(&b, salt, 1 << 20) {
                    Err(_) => {}
                    Ok(f) => prop_assert!(false, "flip {}:{} decoded as {:?}", byte, bit, f),
                }
            }
        }
    }

    #[test]
    fn every_bit_flip_in_a_batch_header_detected(salt: u64, first in 1u64..1_000_000, n in 0u64..100) {
        let bh = BatchHeader { first_lsn: first, end_lsn: first + n, synced_lsn: first - 1, acked_lsn: first - 1, batch_bytes: 4096, flags: 0 };
        let out = bh.encode(salt);
        for byte in 0..BATCH_HEADER_LEN {
            for bit in 0..8 {
                let mut b = out;
                b[byte] ^= 1 << bit;
                let back = decode_frame(&b, salt, 64).and_then(|f| BatchHeader::from_frame(&f));
                prop_assert!(back.is_err(), "flip {}:{} decoded as {:?}", byte, bit, back);
            }
        }
    }

    #[test]
    fn truncation_rejected(payload in proptest::collection::vec(any::<u8>(), 1..200)) {
        let mut out = Vec::new();
        encode_frame(&mut out, 5, 3, FrameKind::BatchEnd, &payload).unwrap();
        for cut in 0..FRAME_HEADER_LEN + payload.len() {
            prop_assert!(decode_frame(&out[..cut], 5, 1 << 20).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128), salt: u64) {
        let _ = decode_frame(&b, salt, 1 << 20);
        let _ = SegmentHeader::decode(&b);
    }
}

/// Found by fuzzing: a frame whose reserved bytes are not zero but whose
/// checksum covers them must still be refused, so that decoding and
/// re-encoding agree byte for byte.
#[test]
fn nonzero_reserved_bytes_rejected() {
    let mut out = Vec::new();
    encode_frame(&mut out, 3, 1, FrameKind::Record, b"abc").unwrap();
    out[20] = 0xff;
    let mut h = crc32fast::Hasher::new();
    h.update(&3u64.to_le_bytes());
    h.update(&out[4..24]);
    h.update(b"abc");
    out[..4].copy_from_slice(&h.finalize().to_le_bytes());
    assert_eq!(decode_frame(&out, 3, 10), Err(FormatError::BadField("reserved")));
}

/// Record frames as a batch holds them, text-like so that they compress.
#[cfg(feature = "compression")]
fn text_frames(salt: u64, first: u64, n: u64) -> Vec<u8> {
    let mut frames = Vec::new();
    for i in 0..n {
        let rec = format!("row {i}: status=shipped warehouse=lisbon quantity={} ", i * 7).repeat(20);
        encode_frame(&mut frames, salt, first + i, FrameKind::Record, rec.as_bytes()).unwrap();
    }
    frames
}

/// The compressed records frame's prefix, byte for byte, and its round trip.
#[cfg(feature = "compression")]
#[test]
fn compressed_frames_round_trip_and_match_diagram() {
    let frames = text_frames(9, 100, 30);
    let mut payload = Vec::new();
    assert!(compress_frames(&frames, &mut payload));
    assert!(payload.len() < frames.len() / 4, "{} of {}", payload.len(), frames.len());
    assert_eq!(payload[0], CODEC_LZ4);
    assert_eq!(&payload[1..4], &[0, 0, 0]);
    assert_eq!(u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize, frames.len());
    assert_eq!(decompress_frames(&payload, 1 << 20).unwrap(), frames);
    // Bytes that do not shrink are left alone.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut out = vec![7u8];
    assert!(!compress_frames(&noise, &mut out));
    assert_eq!(out, [7]);
}

/// Every way the compressed payload can lie gets a typed error, and the
/// claimed length is bounded before anything is allocated.
#[cfg(feature = "compression")]
#[test]
fn compressed_frames_refuse_lies() {
    let frames = text_frames(9, 1, 20);
    let mut good = Vec::new();
    assert!(compress_frames(&frames, &mut good));
    let mut b = good.clone();
    b[0] = 9;
    assert_eq!(decompress_frames(&b, 1 << 20), Err(FormatError::UnsupportedCodec(9)));
    let mut b = good.clone();
    b[2] = 1;
    assert_eq!(decompress_frames(&b, 1 << 20), Err(FormatError::BadField("reserved")));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decompress_frames(&b, u64::from(u32::MAX)), Err(FormatError::TooLong { .. })));
    assert!(
        matches!(decompress_frames(&good, 100), Err(FormatError::TooLong { len, max: 100 }) if len == frames.len() as u64)
    );
    // One byte more or less than the data holds.
    for delta in [-1i64, 1] {
        let mut b = good.clone();
        let claim = (frames.len() as i64 + delta) as u32;
        b[4..8].copy_from_slice(&claim.to_le_bytes());
        assert_eq!(decompress_frames(&b, 1 << 20), Err(FormatError::Decompress));
    }
    assert_eq!(decompress_frames(&good[..good.len() - 3], 1 << 20), Err(FormatError::Decompress));
    assert_eq!(decompress_frames(&good[..5], 1 << 20), Err(FormatError::Truncated));
}

#[cfg(not(feature = "compression"))]
#[test]
fn without_the_feature_compressed_frames_are_unsupported() {
    let mut payload = vec![CODEC_LZ4, 0, 0, 0];
    payload.extend_from_slice(&16u32.to_le_bytes());
    payload.extend_from_slice(&[0u8; 16]);
    assert_eq!(decompress_frames(&payload, 1 << 20), Err(FormatError::UnsupportedCodec(CODEC_LZ4)));
}

#[test]
fn compressed_kind_and_batch_flag_decode() {
    assert_eq!(FrameKind::from_byte(7), Ok(FrameKind::Compressed));
    assert!(!FrameKind::Compressed.is_record());
    let bh = BatchHeader {
        first_lsn: 5,
        end_lsn: 9,
        synced_lsn: 4,
        acked_lsn: 4,
        batch_bytes: 4096,
        flags: BATCH_COMPRESSED,
    };
    let back = decode_frame(&bh.encode(3), 3, 64).and_then(|f| BatchHeader::from_frame(&f)).unwrap();
    assert!(back.compressed() && !back.clean_end());
}

proptest! {
    #[test]
    fn arbitrary_compressed_payloads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256), max in 0u64..1 << 16) {
        let _ = decompress_frames(&b, max);
    }

    /// Past the prefix checks: an LZ4 codec byte, a length claim near the
    /// data's, and arbitrary data for the decoder itself.
    #[test]
    fn arbitrary_lz4_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), extra in 0u32..2048) {
        let mut b = vec![CODEC_LZ4, 0, 0, 0];
        b.extend_from_slice(&(data.len() as u32 + extra).to_le_bytes());
        b.extend_from_slice(&data);
        match decompress_frames(&b, 1 << 20) {
            Ok(frames) => prop_assert_eq!(frames.len(), data.len() + extra as usize),
            Err(e) => prop_assert!(matches!(e, FormatError::Decompress | FormatError::UnsupportedCodec(_) | FormatError::TooLong { .. }), "{:?}", e),
        }
    }

    #[cfg(feature = "compression")]
    #[test]
    fn compressed_frames_round_trip(n in 1u64..40, salt: u64) {
        let frames = text_frames(salt, 1, n);
        let mut payload = Vec::new();
        if compress_frames(&frames, &mut payload) {
            prop_assert_eq!(decompress_frames(&payload, 1 << 24).unwrap(), frames);
        }
    }
}
