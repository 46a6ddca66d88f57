#!/usr/bin/env python3
"""Writes seed inputs for the open_dir fuzz target: real segment images
(valid headers and frames, as src/format/mod.rs describes them) so that the
fuzzer starts from logs it can damage rather than from bytes it must first
make checksum-valid. Input layout: one byte (number of files - 1), then the
files' bytes concatenated in equal parts."""
import struct, zlib, os, sys

ALIGN = 4096

def header(seq, first_lsn, salt, seg_bytes=1 << 16, window=1 << 15, log_id=0x5EED):
    b = b"AIOWALsg" + struct.pack("<IIQQQQQI", 1, ALIGN, seq, first_lsn, salt, seg_bytes, window, log_id)
    b += struct.pack("<I", zlib.crc32(b))
    return b.ljust(ALIGN, b"\0")

def frame(salt, lsn, kind, payload):
    tail = struct.pack("<IQB", len(payload), lsn, kind) + b"\0" * 7
    crc = zlib.crc32(struct.pack("<Q", salt) + tail + (payload if kind != 5 else b""))
    f = struct.pack("<I", crc) + tail + payload
    return f + b"\0" * (-len(f) % 8)

def padding(salt, lsn, used):
    gap = -used % ALIGN
    if gap == 0:
        return b""
    if gap < 24:
        gap += ALIGN
    tail = struct.pack("<IQB", gap - 24, lsn, 5) + b"\0" * 7
    crc = zlib.crc32(struct.pack("<Q", salt) + tail)
    return struct.pack("<I", crc) + tail + b"\0" * (gap - 24)

def segment(seq, first, salt, batches):
    out = bytearray(header(seq, first, salt))
    lsn = first
    for batch in batches:
        body = b""
        for i, (kind, payload) in enumerate(batch):
            body += frame(salt, lsn, kind, payload)
            lsn += 1
        body += padding(salt, lsn, len(body))
        out += body
    return bytes(out), lsn

def main(outdir):
    s1, nxt = segment(1, 1, 0x1111, [[(1, b"hello")], [(2, b"a" * 100), (3, b"b"), (4, b"c" * 300)], [(1, b"x" * 2000)]])
    s2, _ = segment(2, nxt, 0x2222, [[(1, b"second")], [(1, b"")]])
    seeds = {
        "one_segment": b"\x00" + s1,
        "two_segments": b"\x01" + s1.ljust(len(s2), b"\0") + s2.ljust(len(s1), b"\0"),
        "torn_tail": b"\x00" + s1[: len(s1) - 700],
    }
    os.makedirs(outdir, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "seeds", "open_dir"))
