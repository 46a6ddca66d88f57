//! Unit tests of recovery internals.

use super::{MARK_BYTES, SeekMarks};

#[test]
fn marks_are_sparse_and_seek_to_the_last_at_or_before() {
    let m = SeekMarks::default();
    assert_eq!(m.seek(5), None);
    m.add(10, 4096);
    m.add(11, 4096 + 512); // too close to the previous mark
    m.add(40, 4096 + MARK_BYTES);
    m.add(90, 4096 + 2 * MARK_BYTES);
    assert_eq!(m.seek(9), None);
    assert_eq!(m.seek(10), Some((10, 4096)));
    assert_eq!(m.seek(39), Some((10, 4096)));
    assert_eq!(m.seek(40), Some((40, 4096 + MARK_BYTES)));
    assert_eq!(m.seek(1000), Some((90, 4096 + 2 * MARK_BYTES)));
}
