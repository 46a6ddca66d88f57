//! Compressed batches (`Options::compression`, feature `compression`):
//! every backend writes them and reads them back, reopened or live, from
//! any LSN; logs switch compression on and off between opens; damage to a
//! compressed batch is reported like damage to any other; a cut inside one
//! holds. The crash simulator's seed loop (tests/sim_crash.rs) runs with
//! compression on half the seeds.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aiowal::format::{self, BatchHeader, FrameKind, SegmentHeader};
use aiowal::{
    Backend, Compression, CorruptKind, Durability, Error, Lsn, Options, RecoveryMode, StopReason, Wal,
};
use common::{Rng, read_all, segments, small};

/// A text-like record: JSON-ish rows of words and numbers, about 3x
/// compressible, different for every (task, i).
fn text(task: u64, i: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "order", "shipped", "pending", "lisbon", "tokyo", "quantity", "price", "alpha", "delta", "red",
        "blue", "north",
    ];
    let mut rng = Rng(task.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let mut s = String::new();
    while s.len() < len {
        let (a, b) = (WORDS[rng.below(12) as usize], WORDS[rng.below(12) as usize]);
        s.push_str(&format!(
            "{{\"id\":{},\"event\":\"{a}\",\"at\":\"{b}\",\"n\":{}}}\n",
            rng.below(1 << 20),
            i
        ));
    }
    s.truncate(len);
    s.into_bytes()
}

fn lz4(backend: Backend) -> Options {
    small(backend).compression(Compression::Lz4)
}

/// The batch headers of a segment file, in order, walking batch to batch.
fn batches(path: &Path) -> (SegmentHeader, Vec<(u64, BatchHeader)>) {
    let bytes = std::fs::read(path).unwrap();
    let h = SegmentHeader::decode(&bytes).unwrap();
    let mut pos = h.alignment as usize;
    let mut out = Vec::new();
    while pos + format::BATCH_HEADER_LEN <= bytes.len() {
        let Ok(f) = format::decode_frame(&bytes[pos..], h.salt, 64) else { break };
        let Ok(b) = BatchHeader::from_frame(&f) else { break };
        out.push((pos as u64, b));
        pos += b.batch_bytes as usize;
    }
    (h, out)
}

/// Every (segment header, batch) of a log directory.
fn all_batches(dir: &Path) -> Vec<(SegmentHeader, u64, BatchHeader)> {
    let mut out = Vec::new();
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        if SegmentHeader::decode(&bytes).is_err() {
            continue; // prepared, never written
        }
        let (h, b) = batches(&seg);
        out.extend(b.into_iter().map(|(pos, b)| (h, pos, b)));
    }
    out
}

/// Reads from every LSN of `want` and checks the first record and the count.
fn check_reads_from_everywhere(wal: &Wal, want: &BTreeMap<u64, Vec<u8>>) {
    let all: Vec<(u64, Vec<u8>)> = want.iter().map(|(l, r)| (*l, r.clone())).collect();
    assert_eq!(read_all(wal, Lsn::new(1)), all);
    for (i, (lsn, rec)) in all.iter().enumerate().step_by(all.len() / 40 + 1) {
        let mut it = wal.read_from(Lsn::new(*lsn)).unwrap();
        let first = it.next().unwrap().unwrap();
        assert_eq!((first.lsn().get(), first.data()), (*lsn, &rec[..]), "read_from({lsn})");
        assert_eq!(1 + it.count(), all.len() - i, "read_from({lsn}) count");
    }
}

/// 32 appenders of text records (singles and atomic pairs) on every
/// backend: the batches are compressed, write fewer bytes than they hold,
/// and read back the same live, from any LSN, and after a reopen.
async fn compressed_batches_round_trip(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), lz4(backend)).await.unwrap();
    let want = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let (wal, want) = (wal.clone(), Arc::clone(&want));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(t * 77 + 5);
            for i in 0..25u64 {
                let len = 100 + rng.below(3000) as usize;
                if rng.below(4) == 0 {
                    let recs = [text(t, i, len), text(t + 1000, i, len / 3)];
                    let r = wal.append_batch(&recs).await.unwrap();
                    let mut w = want.lock().unwrap();
                    w.insert(r.first().get(), recs[0].clone());
                    w.insert(r.last().get(), recs[1].clone());
                } else {
                    let rec = text(t, i, len);
                    let lsn = wal.append(&rec).await.unwrap();
                    want.lock().unwrap().insert(lsn.get(), rec);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let want = want.lock().unwrap().clone();
    let stats = wal.stats();
    assert!(stats.batches_compressed > 0, "{stats:?}");
    assert!(stats.bytes_written < stats.bytes, "compression saved nothing: {stats:?}");
    check_reads_from_everywhere(&wal, &want);
    wal.close().await.unwrap();

    let batches = all_batches(dir.path());
    assert!(batches.iter().any(|(_, _, b)| b.compressed()));
    for (h, _, b) in &batches {
        assert!(!b.compressed() || h.flags & format::SEGMENT_COMPRESSED != 0, "compressed batch in {h:?}");
    }
    let wal = Wal::open(dir.path(), lz4(backend)).await.unwrap();
    check_reads_from_everywhere(&wal, &want);
    wal.close().await.unwrap();
}

per_backend!(compressed_batches_round_trip);

/// Compression switched on and off between opens: appends that continue
/// in a segment written without it stay uncompressed (an older build can
/// still read that segment), new segments compress, and every open reads
/// everything, whatever its setting.
#[tokio::test]
async fn compression_switched_between_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = BTreeMap::new();
    let mut next = 0u64;
    for (round, on) in [false, true, true, false, true].into_iter().enumerate() {
        let opts = if on { lz4(Backend::Threaded) } else { small(Backend::Threaded) };
        let wal = Wal::open(dir.path(), opts).await.unwrap();
        check_reads_from_everywhere(&wal, &want);
        // 6 KiB text records: two blocks each, one when compressed.
        for _ in 0..30 {
            let rec = text(round as u64, next, 6000);
            next += 1;
            let lsn = wal.append(&rec).await.unwrap();
            want.insert(lsn.get(), rec);
        }
        let compressed = wal.stats().batches_compressed;
        assert_eq!(compressed > 0, on, "round {round}: {compressed} batches compressed");
        wal.close().await.unwrap();
        for (h, _, b) in all_batches(dir.path()) {
            assert!(!b.compressed() || h.flags & format::SEGMENT_COMPRESSED != 0, "round {round}: {h:?}");
        }
    }
    let wal = Wal::open(dir.path(), small(Backend::Threaded)).await.unwrap();
    check_reads_from_everywhere(&wal, &want);
    wal.close().await.unwrap();
}

/// A log of 20 single 6 KiB text records, each its own compressed batch,
/// closed; returns its directory and the compressed batches' positions.
async fn closed_compressed_log() -> (tempfile::TempDir, std::path::PathBuf, Vec<(u64, BatchHeader)>) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), lz4(Backend::Threaded)).await.unwrap();
    for i in 0..20 {
        wal.append(&text(1, i, 6000)).await.unwrap();
    }
    wal.close().await.unwrap();
    let seg = segments(dir.path()).into_iter().next().unwrap();
    let (_, b) = batches(&seg);
    let compressed: Vec<_> = b.into_iter().filter(|(_, b)| b.compressed()).collect();
    assert_eq!(compressed.len(), 20);
    (dir, seg, compressed)
}

/// A flipped byte inside an acknowledged compressed batch is damage to
/// acknowledged records: open refuses with the place, never a panic or a
/// silent cut.
#[tokio::test]
async fn damage_inside_a_compressed_batch_is_reported() {
    let (dir, seg, compressed) = closed_compressed_log().await;
    let (pos, b) = compressed[5];
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = pos as usize + format::BATCH_HEADER_LEN + format::FRAME_HEADER_LEN + 40;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    match Wal::open(dir.path(), lz4(Backend::Threaded)).await {
        Err(Error::Corrupt {
            lsn,
            kind: CorruptKind::Acknowledged { cause: format::FormatError::BadChecksum, .. },
            ..
        }) => {
            assert_eq!(lsn, b.first_lsn);
        }
        other => panic!("expected Corrupt at LSN {}: {other:?}", b.first_lsn),
    }
}

/// A compressed records frame whose checksum holds but whose contents lie
/// (a length claim of 4 GiB, an unknown codec, data that does not
/// decompress) gets a typed error at open: nothing allocated for the claim,
/// no panic.
#[tokio::test]
async fn lying_compressed_frames_get_typed_errors() {
    for lie in 0..3 {
        let (dir, seg, compressed) = closed_compressed_log().await;
        let (pos, b) = compressed[7];
        let mut bytes = std::fs::read(&seg).unwrap();
        let h = SegmentHeader::decode(&bytes).unwrap();
        let at = pos as usize + format::BATCH_HEADER_LEN;
        let f = format::decode_frame(&bytes[at..], h.salt, 1 << 20).unwrap();
        assert_eq!(f.kind, FrameKind::Compressed);
        let mut payload = f.payload.to_vec();
        match lie {
            0 => payload[4..8].copy_from_slice(&u32::MAX.to_le_bytes()),
            1 => payload[0] = 200,
            _ => {
                let n = payload.len();
                payload[n / 2..].iter_mut().for_each(|x| *x = 0xFF);
            }
        }
        let mut frame = Vec::new();
        format::encode_frame(&mut frame, h.salt, f.lsn, FrameKind::Compressed, &payload).unwrap();
        bytes[at..at + frame.len()].copy_from_slice(&frame);
        std::fs::write(&seg, &bytes).unwrap();
        match Wal::open(dir.path(), lz4(Backend::Threaded)).await {
            Err(Error::Corrupt { lsn, kind: CorruptKind::Acknowledged { cause: e, .. }, .. }) => {
                assert_eq!(lsn, b.first_lsn, "lie {lie}");
                let ok = match lie {
                    0 => matches!(e, format::FormatError::TooLong { .. }),
                    1 => e == format::FormatError::UnsupportedCodec(200),
                    _ => e == format::FormatError::Decompress,
                };
                assert!(ok, "lie {lie}: {e:?}");
            }
            other => panic!("lie {lie}: expected Corrupt at LSN {}: {other:?}", b.first_lsn),
        }
    }
}

/// `truncate_after` an LSN in the middle of a compressed write batch: the
/// records above it are gone for good (also after a reopen), and the next
/// append reuses the LSN after the cut.
#[tokio::test]
async fn a_cut_inside_a_compressed_batch_holds() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), lz4(Backend::Threaded)).await.unwrap();
    // Staged together: they share write batches (how they split depends
    // on when the backend takes them).
    let mut staged = Vec::new();
    for i in 0..20 {
        staged.push(wal.stage(&text(2, i, 3000)).await.unwrap());
    }
    for s in staged {
        s.durable().await.unwrap();
    }
    // Cut strictly inside a compressed batch of three or more records.
    let batches = all_batches(dir.path());
    let Some(b) = batches.iter().map(|(_, _, b)| b).find(|b| b.compressed() && b.records() >= 3) else {
        panic!("no compressed batch of 3+ records: {batches:?}")
    };
    let cut = b.first_lsn + 1;
    wal.truncate_after(Lsn::new(cut)).await.unwrap();
    let lsn = wal.append(b"after the cut").await.unwrap();
    assert_eq!(lsn, Lsn::new(cut + 1));
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), lz4(Backend::Threaded)).await.unwrap();
    let got = read_all(&wal, Lsn::new(1));
    assert_eq!(got.len() as u64, cut + 1);
    for (i, (lsn, rec)) in got.iter().take(cut as usize).enumerate() {
        assert_eq!((*lsn, &rec[..]), (i as u64 + 1, &text(2, i as u64, 3000)[..]));
    }
    assert_eq!(got[cut as usize], (cut + 1, b"after the cut".to_vec()));
    wal.close().await.unwrap();
}

/// A live tail follows compressed batches as they become durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_reads_compressed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), lz4(Backend::Uring)).await.unwrap();
    let mut tail = wal.tail(Lsn::new(1));
    let writer = {
        let wal = wal.clone();
        tokio::spawn(async move {
            for i in 0..200u64 {
                let recs: Vec<Vec<u8>> = (0..4).map(|k| text(3, i * 4 + k, 1500)).collect();
                wal.append_batch(&recs).await.unwrap();
            }
        })
    };
    for lsn in 1..=800u64 {
        let r = tail.next().await.unwrap().unwrap();
        assert_eq!((r.lsn().get(), r.data()), (lsn, &text(3, lsn - 1, 1500)[..]));
    }
    writer.await.unwrap();
    assert!(wal.stats().batches_compressed > 0);
    wal.close().await.unwrap();
}

/// The newest batch, compressed, torn by a crash (its bytes damaged and no
/// clean-end mark after it): `TolerateTornTail` cuts it and reports it, the
/// log continues at its LSN; `AbsoluteConsistency` refuses to open.
#[tokio::test]
async fn a_torn_newest_compressed_batch_is_a_torn_tail() {
    let (dir, seg, compressed) = closed_compressed_log().await;
    let (pos, last) = *compressed.last().unwrap();
    assert_eq!(last.first_lsn, 20);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Remove the clean-end mark `close` wrote after it, then tear it.
    let (_, all) = batches(&seg);
    let (mark_at, mark) = *all.last().unwrap();
    assert!(mark.clean_end() && mark.records() == 0);
    bytes[mark_at as usize..(mark_at + u64::from(mark.batch_bytes)) as usize].fill(0);
    let at = pos as usize + format::BATCH_HEADER_LEN + format::FRAME_HEADER_LEN + 100;
    bytes[at..at + 512].fill(0x5A);
    std::fs::write(&seg, &bytes).unwrap();

    let strict = lz4(Backend::Threaded).recovery_mode(RecoveryMode::AbsoluteConsistency);
    assert!(matches!(Wal::open(dir.path(), strict).await, Err(Error::Corrupt { lsn: 20, .. })));
    let wal = Wal::open(dir.path(), lz4(Backend::Threaded)).await.unwrap();
    match &wal.recovery_report().stop {
        StopReason::TornTail { lsn, .. } => assert_eq!(*lsn, Lsn::new(20)),
        other => panic!("expected a torn tail at LSN 20: {other:?}"),
    }
    let got = read_all(&wal, Lsn::new(1));
    assert_eq!(got.len(), 19);
    assert!(got.iter().all(|(l, r)| *r == text(1, l - 1, 6000)));
    assert_eq!(wal.append(b"after the tear").await.unwrap(), Lsn::new(20));
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), lz4(Backend::Threaded)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::new(20)), vec![(20, b"after the tear".to_vec())]);
    wal.close().await.unwrap();
}

/// Under `Durability::None` a compressed log still syncs once about a
/// segment's worth of uncompressed bytes went out unsynced: what a crash
/// leaves for `open` to copy forward (uncompressed) stays within a segment.
#[tokio::test]
async fn relaxed_levels_sync_a_compressed_log_every_segment_worth() {
    let dir = tempfile::tempdir().unwrap();
    let opts = lz4(Backend::Threaded).durability(Durability::None);
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    // 8.4 MiB of zeroes in atomic batches of 6, each its own write batch
    // (28 KiB, one block once compressed): 32 segments' worth in about 5.
    let zeros = vec![0u8; 4096];
    for _ in 0..350 {
        wal.append_batch(vec![&zeros[..]; 6]).await.unwrap();
    }
    let stats = wal.stats();
    assert!(stats.bytes_written < 4 << 20, "{stats:?}");
    // The segment switches alone would sync once per segment.
    assert!(stats.syncs > 3 * stats.segments_live, "{} syncs for 32 segments' worth: {stats:?}", stats.syncs);
    wal.close().await.unwrap();
}

/// The same, through a power loss or a process kill on the crash
/// simulator: the recovered log holds every record up to the last sync,
/// and what `open` copies forward fits a segment of the configured size.
#[cfg(feature = "sim")]
#[test]
fn a_crash_in_a_relaxed_compressed_log_copies_forward_within_a_segment() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut copied = 0;
    for (seed, kill) in [(11u64, false), (12, true), (13, true)] {
        rt.block_on(async {
            let disk = aiowal::sim::SimDisk::new(seed);
            let opts = Options::default()
                .alignment(512)
                .segment_bytes(64 << 10)
                .batch_bytes_max(8 << 10)
                .max_record_bytes(2048)
                .compression(Compression::Lz4)
                .durability(Durability::None);
            let wal = Wal::open("/sim/relaxed", opts.clone().sim(&disk)).await.unwrap();
            let mut tasks = Vec::new();
            for t in 0..8u64 {
                let wal = wal.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..400u64 {
                        wal.append(&vec![(t * 31 + i) as u8; 1500]).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let durable = wal.durable_lsn();
            let stats = wal.stats();
            assert!(stats.batches_compressed > 0 && stats.syncs > 0, "{stats:?}");
            // 4.8 MB of records in far fewer bytes: many segments' worth unsynced
            // but for the bound.
            assert!(stats.bytes_written < stats.bytes / 4, "{stats:?}");
            drop(wal);
            let disk = if kill { disk.restart_process() } else { disk.restart() };
            let wal = Wal::open("/sim/relaxed", opts.clone().sim(&disk)).await.unwrap();
            let got = read_all(&wal, Lsn::new(1));
            assert!(got.len() as u64 >= durable.get(), "{} recovered, {durable} were durable", got.len());
            assert!(got.iter().all(|(_, r)| r.len() == 1500 && r.iter().all(|&b| b == r[0])));
            copied += wal.recovery_report().copied_forward;
            for (path, _) in disk.files() {
                let bytes = disk.contents(&path).unwrap_or_default();
                if let Ok(h) = SegmentHeader::decode(&bytes) {
                    assert_eq!(
                        h.segment_bytes,
                        64 << 10,
                        "seed {seed}: {} ({:?})",
                        path.display(),
                        wal.recovery_report()
                    );
                }
            }
            wal.close().await.unwrap();
        });
    }
    assert!(copied > 0, "no crash left records to copy forward");
}

/// Compression needs segments that hold three batches (what a crash can
/// leave to copy forward uncompressed): smaller ones are refused at open.
#[tokio::test]
async fn compression_with_too_small_segments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(4 << 20).compression(Compression::Lz4);
    match Wal::open(dir.path(), opts.clone()).await {
        Err(Error::InvalidOption { name: "segment_bytes", reason }) => {
            assert!(reason.contains("three batch_bytes_max"), "{reason}")
        }
        other => panic!("expected InvalidOption: {:?}", other.map(|_| ())),
    }
    let wal = Wal::open(dir.path(), opts.batch_bytes_max(1 << 20).max_record_bytes(512 << 10)).await.unwrap();
    wal.close().await.unwrap();
}
