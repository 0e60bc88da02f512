//! `cargo xtask bench` (QLock part): the CPU time of each side of a session
//! setup, single thread, in memory, as ratios against references from the
//! same libraries measured in the same run:
//!
//! - plain X25519: a key pair and one Diffie-Hellman per side;
//! - classical SIGMA: X25519 as above plus one Ed25519 signature and one
//!   verification per side (what a classical-only QLock would cost);
//! - the hybrid handshake (X25519MLKEM768, Ed25519 + ML-DSA-65 both sides),
//!   opener and answerer apart, and its parts;
//! - a rekey (both sides), and the bytes on the wire.
//!
//! Medians of RUNS, in the thread's own CPU time (CLOCK_THREAD_CPUTIME_ID),
//! so other work on the machine does not count. Writes target/bench/qlock.json.

use std::time::Duration;

use bpi_qlock::handshake::{Answerer, Hello, Opener};
use bpi_qlock::identity::Identity;
use bpi_qlock::{kex, schedule};
use ed25519_dalek::{Signer, Verifier};
use serde_json::json;

const RUNS: usize = 200;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread's CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// `f`'s result and the CPU time this thread spent in it.
fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = cpu_now();
    let out = std::hint::black_box(f());
    (out, cpu_now() - t)
}

fn main() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (mut x25519, mut sigma, mut opener, mut answerer, mut rekey) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut kem_keygen, mut kem_answer, mut kem_finish, mut sign, mut verify) = (vec![], vec![], vec![], vec![], vec![]);
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let ed_pub = ed.verifying_key();
    let mut bytes = 0;
    for _ in 0..RUNS {
        // Plain X25519 per side: a key pair and the exchange.
        x25519.push(time(|| kex::plain_x25519().unwrap()).1);
        // Classical SIGMA per side: X25519, then sign the transcript and verify the peer's.
        sigma.push(
            time(|| {
                let k = kex::plain_x25519().unwrap();
                let s = ed.sign(&k);
                ed_pub.verify(&k, &s).unwrap();
            })
            .1,
        );
        // The hybrid handshake, each side's calls timed apart.
        let ((o, hello), t1) = time(|| Opener::start(&a, b.public(), 500_000, 3600, 1000).unwrap());
        let ((ans, reply), t2) = time(|| {
            let h = Hello::decode(&hello).unwrap();
            Answerer::reply(&b, &hello, &h, a.public()).unwrap()
        });
        let ((of, finish), t3) = time(|| o.on_reply(&a, &reply).unwrap());
        let ((eb, done), t4) = time(|| ans.on_finish(&finish).unwrap());
        let (ea, t5) = time(|| of.on_done(&done).unwrap());
        assert_eq!(ea.key, eb.key);
        opener.push(t1 + t3 + t5);
        answerer.push(t2 + t4);
        bytes = hello.len() + reply.len() + finish.len() + done.len();
        // A rekey, both sides: each derives the next key and checks the other's MAC.
        rekey.push(
            time(|| {
                let next = schedule::next_key(&ea.key);
                let tag = schedule::mac(&schedule::control_key(&next), &[b"ack"]);
                assert!(schedule::mac_ok(&schedule::control_key(&schedule::next_key(&eb.key)), &[b"ack"], &tag));
            })
            .1,
        );
        // Parts.
        let (opening, t) = time(|| kex::Opening::new().unwrap());
        kem_keygen.push(t);
        let ((share, _), t) = time(|| kex::answer(&opening.share).unwrap());
        kem_answer.push(t);
        kem_finish.push(time(|| opening.finish(&share).unwrap()).1);
        let (sig, t) = time(|| a.sign(b"transcript"));
        sign.push(t);
        verify.push(time(|| a.public().verify(b"transcript", &sig).unwrap()).1);
    }
    let (x, s, o, r) = (median(x25519), median(sigma), median(opener), median(answerer));
    let out = json!({
        "runs": RUNS,
        "per_side_us": { "plain_x25519": x, "classical_sigma": s, "hybrid_opener": o, "hybrid_answerer": r },
        "ratio_vs_plain_x25519": { "classical_sigma": s / x, "hybrid_opener": o / x, "hybrid_answerer": r / x },
        "ratio_vs_classical_sigma": { "hybrid_opener": o / s, "hybrid_answerer": r / s },
        "parts_us": {
            "kex_open (ML-KEM-768 key pair + X25519 key)": median(kem_keygen),
            "kex_answer (encapsulate + X25519 key and DH)": median(kem_answer),
            "kex_finish (decapsulate + X25519 DH)": median(kem_finish),
            "hybrid_sign": median(sign),
            "hybrid_verify": median(verify),
        },
        "rekey_both_sides_us": median(rekey),
        "round_trips": { "hybrid": 2, "plain_x25519": 1 },
        "bytes": { "hybrid": bytes, "plain_x25519": 64 },
        "target_per_side_us": 100,
    });
    println!("QLock session setup, CPU time per side, median of {RUNS} (one thread, in memory):");
    println!("  plain X25519 (key pair + DH)        {x:8.1} us  1.0x");
    println!("  classical SIGMA (X25519 + Ed25519)  {s:8.1} us  {:.1}x", s / x);
    println!("  hybrid handshake, opener            {o:8.1} us  {:.1}x  ({:.1}x classical SIGMA)", o / x, o / s);
    println!("  hybrid handshake, answerer          {r:8.1} us  {:.1}x  ({:.1}x classical SIGMA)", r / x, r / s);
    println!("  target 100 us per side: {}", if o.max(r) <= 100.0 { "met".to_string() } else { format!("missed by {:.1}x", o.max(r) / 100.0) });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("qlock.json"), serde_json::to_vec_pretty(&out).unwrap());
}
