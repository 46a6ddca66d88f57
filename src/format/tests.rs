#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

/// The diagram in the module docs, byte for byte: if a constant moves, this fails.
#[test]
fn segment_header_matches_diagram() {
    let h = SegmentHeader {
        alignment: 4096,
        sequence: 0x0102_0304_0506_0708,
        first_lsn: 42,
        salt: 0xAABB_CCDD_EEFF_0011,
        segment_bytes: 1 << 20,
        window_bytes: 1 << 16,
        log_id: 0xDEAD_BEEF,
    };
    let b = h.encode();
    let mut want = Vec::new();
    want.extend_from_slice(b"AIOWALsg");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&4096u32.to_le_bytes());
    want.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    want.extend_from_slice(&42u64.to_le_bytes());
    want.extend_from_slice(&0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
    want.extend_from_slice(&(1u64 << 20).to_le_bytes());
    want.extend_from_slice(&(1u64 << 16).to_le_bytes());
    want.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    let crc = crc32fast::hash(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(&b[..], &want[..]);
    assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
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
    let h = SegmentHeader {
        alignment: 4096,
        sequence: 1,
        first_lsn: 1,
        salt: 3,
        segment_bytes: 1 << 20,
        window_bytes: 1 << 16,
        log_id: 7,
    };
    let good = h.encode();
    for byte in 8..64 {
        for bit in 0..8 {
            let mut b = good;
            b[byte] ^= 1 << bit;
            assert!(SegmentHeader::decode(&b).is_err(), "flip {byte}:{bit} undetected");
        }
    }
}

#[test]
fn padding_widens_small_gaps() {
    assert_eq!(padding_for(4096, 4096), 0);
    assert_eq!(padding_for(4000, 4096), 96);
    assert_eq!(padding_for(4088, 4096), 8 + 4096);
    assert_eq!(padding_for(4080, 4096), 16 + 4096);
    assert_eq!(padding_for(4072, 4096), 24);
    let mut out = vec![0u8; 4000];
    encode_padding(&mut out, 1, 5, 96).unwrap();
    assert_eq!(out.len(), 4096);
    let f = decode_frame(&out[4000..], 1, 0).unwrap();
    assert_eq!((f.kind, f.lsn, f.len_on_disk), (FrameKind::Padding, 5, 96));
    assert!(encode_padding(&mut out, 1, 5, 20).is_err());
    assert!(encode_padding(&mut out, 1, 5, 25).is_err());
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
