//! Host integration: real stores on disk, altered the ways an attacker or a
//! failing disk would, and what verify and the writer make of each.

use std::path::Path;

use bpi_ledger::frame;
use bpi_ledger::log::LOG_FILE;
use bpi_ledger::store::{open_read, Store, StoreOptions};
use bpi_ledger::{verify, Draft, Ledger, LedgerError};

fn draft(i: u64) -> Draft {
    let data = format!(r#"{{"key":"setting-{i}","value":{i}}}"#);
    Draft::new("settings-plugin", "settings", "modified", "root", data)
}

/// A store of `n` blocks with a checkpoint at size `n`.
fn store(dir: &Path, n: u64) {
    let (ledger, _) = Ledger::open(StoreOptions::new(dir)).unwrap();
    for i in 0..n {
        ledger.append(draft(i)).unwrap();
    }
    ledger.close().unwrap();
}

/// Byte ranges of each frame in the log, in order.
fn frames(dir: &Path) -> Vec<std::ops::Range<usize>> {
    let buf = std::fs::read(dir.join(LOG_FILE)).unwrap();
    let s = frame::scan(&buf);
    assert_eq!(s.tail, frame::Tail::Clean);
    s.frames.iter().map(|(off, r)| *off as usize..r.end).collect()
}

#[test]
fn a_clean_store_verifies_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 20);
    let r = verify::verify(dir.path(), None, None).unwrap();
    assert!(r.ok, "{}", r.render());
    assert_eq!(r.blocks, 20);
    assert_eq!(r.checkpoint.size, Some(20));
    let (s, report) = Store::open(StoreOptions::new(dir.path())).unwrap();
    assert_eq!(report.blocks, 20);
    assert!(report.cut.is_none());
    let b7 = s.log().block(7).unwrap();
    assert_eq!((b7.height, b7.draft.data.as_str()), (7, draft(6).data.as_str()));
}

#[test]
fn one_changed_byte_anywhere_in_a_block_names_that_block() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 6);
    let log = dir.path().join(LOG_FILE);
    let pristine = std::fs::read(&log).unwrap();
    let ranges = frames(dir.path());
    for (i, range) in ranges.iter().enumerate() {
        let height = i as u64 + 1;
        for pos in range.clone() {
            let mut b = pristine.clone();
            b[pos] ^= 0x01;
            std::fs::write(&log, &b).unwrap();
            let r = verify::verify(dir.path(), None, None).unwrap();
            assert!(!r.ok, "byte {pos} of block {height}: verify passed");
            let bad = r.first_bad.as_ref().map(|b| b.height);
            assert_eq!(bad, Some(height), "byte {pos} of block {height}: {}", r.render());
        }
    }
    std::fs::write(&log, &pristine).unwrap();
    assert!(verify::verify(dir.path(), None, None).unwrap().ok);
}

#[test]
fn a_deleted_block_is_named() {
    for victim in [1usize, 3, 6] {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), 6);
        let log = dir.path().join(LOG_FILE);
        let b = std::fs::read(&log).unwrap();
        let r = frames(dir.path())[victim - 1].clone();
        let mut cut = b[..r.start].to_vec();
        cut.extend_from_slice(&b[r.end..]);
        std::fs::write(&log, &cut).unwrap();
        let report = verify::verify(dir.path(), None, None).unwrap();
        assert!(!report.ok);
        if victim == 6 {
            // The chain alone cannot see a missing last block; the signed checkpoint does.
            assert_eq!(report.first_bad.map(|b| b.height), None);
            let why = report.checkpoint.problem.unwrap();
            assert!(why.contains("blocks 6..=6 were removed"), "{why}");
        } else {
            let bad = report.first_bad.as_ref().unwrap();
            assert_eq!(bad.height, victim as u64, "{}", report.render());
            assert!(bad.what.contains("missing"), "{}", bad.what);
        }
        // The writer refuses a damaged store rather than append to it.
        let err = Store::open(StoreOptions::new(dir.path())).err().expect("opened a damaged store");
        assert!(matches!(err, LedgerError::Damaged { .. }), "{err}");
    }
}

#[test]
fn two_swapped_blocks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 6);
    let log = dir.path().join(LOG_FILE);
    let b = std::fs::read(&log).unwrap();
    let f = frames(dir.path());
    let mut swapped = b[..f[2].start].to_vec();
    swapped.extend_from_slice(&b[f[3].clone()]);
    swapped.extend_from_slice(&b[f[2].clone()]);
    swapped.extend_from_slice(&b[f[3].end..]);
    std::fs::write(&log, &swapped).unwrap();
    let r = verify::verify(dir.path(), None, None).unwrap();
    assert_eq!(r.first_bad.as_ref().map(|b| b.height), Some(3), "{}", r.render());
    assert!(r.first_bad.unwrap().what.contains("block 4"));
}

#[test]
fn a_rewritten_history_fails_the_signed_checkpoint() {
    // Rebuild the whole log with a different block 2 and a valid chain: only
    // the checkpoint signed over the original can tell.
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 5);
    let forged = tempfile::tempdir().unwrap();
    {
        let (ledger, _) = Ledger::open(StoreOptions::new(forged.path())).unwrap();
        for i in 0..5 {
            ledger.append(draft(if i == 1 { 99 } else { i })).unwrap();
        }
    }
    std::fs::copy(forged.path().join(LOG_FILE), dir.path().join(LOG_FILE)).unwrap();
    let r = verify::verify(dir.path(), None, None).unwrap();
    assert!(r.first_bad.is_none());
    assert!(!r.ok);
    assert!(r.checkpoint.problem.unwrap().contains("history was rewritten"));
}

#[test]
fn a_torn_tail_is_reported_then_cut_by_the_writer_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 4);
    let log = dir.path().join(LOG_FILE);
    let good = std::fs::read(&log).unwrap();
    // Half of a fifth record, as a crash mid-write leaves it.
    let mut torn = good.clone();
    let extra = tempfile::tempdir().unwrap();
    store(extra.path(), 5);
    let five = std::fs::read(extra.path().join(LOG_FILE)).unwrap();
    let f5 = frames(extra.path())[4].clone();
    torn.extend_from_slice(&five[f5.start..f5.start + (f5.end - f5.start) / 2]);
    std::fs::write(&log, &torn).unwrap();

    let r = verify::verify(dir.path(), None, None).unwrap();
    assert_eq!(r.first_bad.as_ref().map(|b| b.height), Some(5));
    assert!(r.first_bad.unwrap().what.contains("incomplete record"));

    let (s, report) = Store::open(StoreOptions::new(dir.path())).unwrap();
    let cut = report.cut.expect("the torn tail was not reported");
    assert!(cut.contains("after block 4"), "{cut}");
    drop(s);
    assert_eq!(std::fs::read(&log).unwrap(), good);
    assert!(verify::verify(dir.path(), None, None).unwrap().ok);
}

#[test]
fn a_torn_tail_that_would_lose_checkpointed_blocks_is_damage_not_a_tail() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 4);
    let log = dir.path().join(LOG_FILE);
    let b = std::fs::read(&log).unwrap();
    std::fs::write(&log, &b[..b.len() - 10]).unwrap();
    let err = Store::open(StoreOptions::new(dir.path())).err().expect("cut a checkpointed block");
    assert!(err.to_string().contains("were removed"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap().len(), b.len() - 10, "the writer changed a damaged log");
}

#[test]
fn concurrent_appends_are_group_committed_in_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(StoreOptions::new(dir.path())).unwrap();
    let ledger = std::sync::Arc::new(ledger);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || (0..200).map(|i| l.append(draft(t * 1000 + i)).unwrap().height).collect::<Vec<_>>())
        })
        .collect();
    let mut heights: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    heights.sort();
    let want: Vec<u64> = (1..=3200).collect();
    let wrong = heights.iter().zip(&want).position(|(a, b)| a != b);
    assert!(heights.len() == 3200 && wrong.is_none(), "receipts are not heights 1..=3200 once each (first difference at {wrong:?})");
    ledger.close().unwrap();
    let r = verify::verify(dir.path(), None, None).unwrap();
    assert!(r.ok, "{}", r.render());
    assert_eq!(r.checkpoint.size, Some(3200));
}

#[test]
fn a_second_writer_is_refused_and_limits_refuse_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(StoreOptions::new(dir.path())).unwrap();
    let err = Store::open(StoreOptions::new(dir.path())).err().expect("two writers");
    assert!(matches!(err, LedgerError::Busy { .. }), "{err}");
    assert!(err.to_string().contains(&format!("pid {}", std::process::id())));
    let mut bad = draft(1);
    bad.action = "Not A Token".into();
    assert!(ledger.append(bad).is_err());
    assert_eq!(ledger.append(draft(2)).unwrap().height, 1);
    ledger.close().unwrap();
    let (log, problem) = open_read(dir.path()).unwrap();
    assert!(problem.is_none());
    assert_eq!(log.len(), 1);
}

#[test]
fn the_log_is_append_only_where_the_file_system_allows() {
    if !bpi_support::skip::needs_root("setting the append-only attribute (CAP_LINUX_IMMUTABLE)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.append_only = true;
    let (ledger, report) = Ledger::open(opts.clone()).unwrap();
    ledger.append(draft(1)).unwrap();
    ledger.close().unwrap();
    drop(ledger);
    let log = dir.path().join(LOG_FILE);
    if let Some(why) = report.append_only {
        return bpi_support::skip::skip(&why);
    }
    // Overwriting in place and truncating are refused by the kernel.
    let f = std::fs::OpenOptions::new().write(true).open(&log);
    assert!(f.is_err(), "an append-only log opened for overwriting");
    let reopened = Ledger::open(opts).unwrap().0;
    assert_eq!(reopened.append(draft(2)).unwrap().height, 2);
    reopened.close().unwrap();
    drop(reopened);
    // Let the temporary directory go.
    std::process::Command::new("chattr").arg("-a").arg(&log).status().unwrap();
}


/// The key (and with it the witness) lives apart from the log, as on a node
/// (the encrypted store vs /bpi/data/immutable). Emptying the log and deleting
/// its checkpoint, or cutting blocks and re-signing nothing, is a rollback the
/// witness still tells: verify fails and the writer refuses to open.
#[test]
fn a_rollback_to_an_empty_log_without_its_checkpoint_is_caught_by_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let opts = || StoreOptions { key: keys.path().join("checkpoint.key"), ..StoreOptions::new(dir.path()) };
    let (ledger, _) = Ledger::open(opts()).unwrap();
    for i in 0..5 {
        ledger.append(draft(i)).unwrap();
    }
    ledger.close().unwrap();
    drop(ledger);
    let witness = bpi_ledger::store::witness_path(&opts().key);
    assert!(witness.exists());
    assert!(verify::verify(dir.path(), None, Some(&witness)).unwrap().ok);

    // Without the witness, the emptied store looks like a new one.
    std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let blind = verify::verify(dir.path(), None, None).unwrap();
    assert!(blind.ok, "{}", blind.render());
    let r = verify::verify(dir.path(), None, Some(&witness)).unwrap();
    assert!(!r.ok, "{}", r.render());
    let why = r.checkpoint.problem.unwrap();
    assert!(why.contains("rolled back") && why.contains("covers 5 blocks but the log holds 0"), "{why}");
    let refused = Store::open(opts()).err().expect("the writer opened a rolled-back store").to_string();
    assert!(refused.contains("rolled back"), "{refused}");
}

/// The log is read a window at a time, never whole: a sparse 1 TiB file (it
/// aborted verify with a failed 1 TiB allocation) is reported as damaged after
/// one window of zeros, and a FIFO in its place (it hung verify) is refused.
#[test]
fn a_huge_sparse_log_or_a_fifo_is_reported_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 3);
    let log = dir.path().join(LOG_FILE);
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(1 << 40).unwrap();
    let started = std::time::Instant::now();
    let r = verify::verify(dir.path(), None, None).unwrap();
    assert!(!r.ok, "{}", r.render());
    let bad = r.first_bad.as_ref().unwrap();
    assert_eq!(bad.height, 4, "{}", r.render());
    assert!(bad.what.contains("without a record"), "{}", r.render());
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    let refused = Store::open(StoreOptions::new(dir.path())).err().expect("the writer opened it").to_string();
    assert!(refused.contains("damaged at height 4"), "{refused}");

    std::fs::remove_file(&log).unwrap();
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = verify::verify(dir.path(), None, None).expect_err("a FIFO verified").full();
    assert!(err.contains("not a regular file"), "{err}");
}
