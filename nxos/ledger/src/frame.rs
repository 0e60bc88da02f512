//! The on-disk record frame: `len: u32 BE | crc32: u32 BE | payload`, where
//! payload is a block's canonical encoding followed by its 32-byte hash.
//!
//! A crash can only leave an *incomplete* last frame: appends are acknowledged
//! after fdatasync, so whatever is torn was never acknowledged. Scanning tells
//! a torn tail (cut on open by the writer, and reported) from damage anywhere
//! else (never cut: verify names the height).

pub const HEADER: usize = 8;
/// Smaller than any valid payload (tag, fixed fields, seven length prefixes, hash).
pub const MIN_PAYLOAD: usize = crate::block::TAG.len() + 8 + 8 + 4 * 7 + 4 + 32;
/// Larger than any valid payload (data and field limits plus fixed parts).
pub const MAX_PAYLOAD: usize = crate::block::MAX_DATA + 5 * crate::block::MAX_FIELD + 32 + MIN_PAYLOAD;
/// A crash that extended the file without writing its data leaves zeros; a
/// payload whose last bytes are all zero was cut short, not altered (a real
/// block ends in its SHA-256).
const ZERO_TAIL: usize = 16;

pub fn push(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last good frame.
    Clean,
    /// An incomplete record from an interrupted append at `offset`.
    Torn { offset: u64, bytes: u64, why: &'static str },
    /// A record at `offset` that no crash can produce: altered or damaged.
    Damaged { offset: u64, why: String },
}

#[derive(Debug)]
pub struct Scan {
    /// (offset of the frame, payload range) for each good frame, in order.
    pub frames: Vec<(u64, std::ops::Range<usize>)>,
    pub tail: Tail,
}

/// Splits `buf` (a whole log file) into frames, stopping at the first bad
/// one. Lengths are walked in order; checksums are checked in parallel.
pub fn scan(buf: &[u8]) -> Scan {
    let mut frames = Vec::with_capacity(buf.len() / 256);
    let mut at = 0usize;
    let tail = loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        let torn = |why| Tail::Torn { offset: at as u64, bytes: rest.len() as u64, why };
        if rest.len() < HEADER {
            break torn("incomplete record header");
        }
        let len = u32::from_be_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
            if rest.iter().all(|&b| b == 0) {
                break torn("zero-filled tail");
            }
            break Tail::Damaged { offset: at as u64, why: format!("record length {len} is impossible") };
        }
        if rest.len() < HEADER + len {
            break torn("record runs past the end of the file");
        }
        frames.push((at as u64, at + HEADER..at + HEADER + len));
        at += HEADER + len;
    };
    match first_bad_checksum(buf, &frames) {
        None => Scan { frames, tail },
        Some(i) => {
            let (offset, range) = frames[i].clone();
            let last = range.end == buf.len();
            let tail = if last && buf[range.end - ZERO_TAIL..range.end].iter().all(|&b| b == 0) {
                Tail::Torn { offset, bytes: (buf.len() as u64) - offset, why: "record cut short (zero-filled)" }
            } else {
                Tail::Damaged { offset, why: "record checksum mismatch".into() }
            };
            frames.truncate(i);
            Scan { frames, tail }
        }
    }
}

fn crc_ok(buf: &[u8], (offset, range): &(u64, std::ops::Range<usize>)) -> bool {
    let at = *offset as usize;
    let want = u32::from_be_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    crc32fast::hash(&buf[range.clone()]) == want
}

fn first_bad_checksum(buf: &[u8], frames: &[(u64, std::ops::Range<usize>)]) -> Option<usize> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = frames.len().div_ceil(workers).max(16 * 1024);
    std::thread::scope(|s| {
        let parts: Vec<_> = frames
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| s.spawn(move || part.iter().position(|f| !crc_ok(buf, f)).map(|i| k * chunk + i)))
            .collect();
        parts.into_iter().filter_map(|p| p.join().expect("checksum worker panicked")).min()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(fill: u8) -> Vec<u8> {
        vec![fill; MIN_PAYLOAD + 10]
    }

    fn log(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            push(&payload(i as u8 + 1), &mut out);
        }
        out
    }

    #[test]
    fn clean_log_scans_whole() {
        let buf = log(3);
        let s = scan(&buf);
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(&buf[s.frames[1].1.clone()], &payload(2)[..]);
    }

    #[test]
    fn every_truncation_is_a_torn_tail_after_the_complete_frames() {
        let buf = log(2);
        let one = HEADER + payload(0).len();
        for cut in 1..buf.len() {
            let s = scan(&buf[..cut]);
            let want = if cut < one { 0 } else { 1 };
            assert_eq!(s.frames.len(), want, "cut {cut}");
            if cut == one {
                assert_eq!(s.tail, Tail::Clean);
            } else {
                assert!(matches!(s.tail, Tail::Torn { .. }), "cut {cut}: {:?}", s.tail);
            }
        }
    }

    #[test]
    fn zeros_after_a_crash_are_torn_but_a_flipped_byte_is_damage() {
        let mut buf = log(2);
        buf.extend_from_slice(&[0u8; 4096]);
        assert!(matches!(scan(&buf).tail, Tail::Torn { why: "zero-filled tail", .. }));

        let mut zeroed = log(2);
        let n = zeroed.len();
        zeroed[n - 100..].fill(0);
        assert!(matches!(scan(&zeroed).tail, Tail::Torn { .. }));

        for pos in [0usize, 5, 20, HEADER + payload(0).len() + 30] {
            let mut b = log(3);
            b[pos] ^= 0x40;
            let s = scan(&b);
            assert!(matches!(s.tail, Tail::Damaged { .. } | Tail::Torn { .. }), "pos {pos}");
            assert!(s.frames.len() < 3);
        }
        // A flip in the last frame's payload is damage, never a tail to cut.
        let mut b = log(3);
        let n = b.len();
        b[n - 5] ^= 1;
        assert!(matches!(scan(&b).tail, Tail::Damaged { .. }));
    }
}
