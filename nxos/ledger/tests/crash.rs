//! Crash safety: a writer process appending from several threads is killed
//! with SIGKILL at random moments, 50 times over one store. After each kill the
//! store reopens (cutting any torn tail), every acknowledged block is there
//! with the hash it was acknowledged with, and the whole chain verifies.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpi_ledger::store::{Store, StoreOptions};
use bpi_ledger::{verify, Draft, Ledger};

const ENV_DIR: &str = "BPI_LEDGER_CRASH_DIR";
const KILLS: usize = 50;

/// The writer: runs only when the parent test starts this binary as its child.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(ENV_DIR) else { return };
    let (ledger, _) = Ledger::open(StoreOptions::new(dir)).expect("child: open");
    let ledger = std::sync::Arc::new(ledger);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let data = format!(r#"{{"key":"t{t}","value":{i},"pad":"{}"}}"#, "x".repeat((i % 97) as usize));
                    let r = l.append(Draft::new("settings-plugin", "settings", "modified", "root", data)).expect("append");
                    println!("ack {} {}", r.height, hex::encode(r.hash));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// xorshift64*: random kill moments without a dependency; the seed is printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_block() {
    if std::env::var_os(ENV_DIR).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let (mut cuts, mut total_acks) = (0, 0);
    let started = Instant::now();
    for round in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (h, hash) = rest.split_once(' ').unwrap();
                    acks.push((h.parse::<u64>().unwrap(), hash.to_string()));
                }
            }
            acks
        });
        // Sometimes before the first append, mostly in the middle of the stream.
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 250));
        child.kill().unwrap();
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        total_acks += acks.len();
        for (h, hash) in acks {
            if let Some(old) = acked.insert(h, hash.clone()) {
                assert_eq!(old, hash, "round {round}: height {h} was acknowledged twice with different hashes");
            }
        }

        let (store, report) = Store::open(StoreOptions::new(dir.path()))
            .unwrap_or_else(|e| panic!("round {round}: reopening after SIGKILL failed: {e}"));
        cuts += usize::from(report.cut.is_some());
        let log = store.log();
        for (&h, hash) in &acked {
            assert!(h <= log.len(), "round {round}: acknowledged block {h} is gone (log has {})", log.len());
            assert_eq!(&hex::encode(log.block(h).unwrap().hash), hash, "round {round}: block {h} changed");
        }
        drop(store);
        let r = verify::verify(dir.path(), None, None).unwrap();
        assert!(r.ok, "round {round}: {}", r.render());
    }
    eprintln!(
        "{KILLS} kills in {:.1}s: {total_acks} acknowledged appends, {} blocks kept, {cuts} torn tails cut",
        started.elapsed().as_secs_f64(),
        acked.keys().last().copied().unwrap_or(0)
    );
    assert!(total_acks > 0, "the writer never acknowledged anything: the test proved nothing");
}
