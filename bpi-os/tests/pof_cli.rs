//! `bpi-os nxos verify`: a path proof made by bpi-pof for a three-node route
//! is valid; a tampered, bypassed or short one is invalid (exit 3) naming
//! the first bad hop; a file that is no proof is an error (exit 1). As root,
//! with a ledger on a private bus, the verdict is anchored there and its
//! inclusion proof checks.

mod common;

use bpi_pof::chain::{add_hop, PathProof};
use bpi_qlock::identity::Identity;
use common::{can_run, cli, scratch, start_bus, text};
use serde_json::Value;

fn setup(dir: &std::path::Path) -> (Vec<PathProof>, std::path::PathBuf) {
    let ids: Vec<Identity> = (0..3).map(|i| Identity::from_seeds([i + 10; 64])).collect();
    let mut topo = String::new();
    for (i, id) in ids.iter().enumerate() {
        topo.push_str(&format!("[[node]]\nid = \"n{i}\"\nscore = 0.9\nidentity = \"{}\"\n\n", id.public().to_base64()));
    }
    let t = dir.join("topology.toml");
    std::fs::write(&t, topo).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut proof: Vec<PathProof> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let hop = add_hop(id, &format!("n{i}"), "p1", proof.last(), now - 100 + i as u64, 0.9);
        proof.push(hop);
    }
    (proof, t)
}

fn run(s: &common::Scratch, bus: &str, proof: &[PathProof], route: &str, topo: &std::path::Path) -> (Option<i32>, Value, String) {
    let f = s.dir.path().join(format!("proof-{}.json", common::rand_suffix()));
    std::fs::write(&f, serde_json::to_vec(proof).unwrap()).unwrap();
    let o = cli(s, None, &["nxos", "verify", "--path-id", "p1", "--proof", f.to_str().unwrap(), "--route", route, "--topology", topo.to_str().unwrap(), "--cryptographic", "--json", "--bus", bus]);
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap_or(Value::Null), text(&o))
}

#[test]
fn path_proofs_verify_or_name_their_first_bad_hop() {
    let s = scratch();
    let (proof, topo) = setup(s.dir.path());
    let nobus = "unix:path=/nonexistent/bus";
    let (code, v, out) = run(&s, nobus, &proof, "n0,n1,n2", &topo);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((v["valid"].clone(), v["hops"].clone(), v["trust_source"].clone()), (Value::Bool(true), 3.into(), "Meta-RIB file".into()));
    assert!(v["ledger"]["note"].as_str().unwrap().contains("not recorded"), "{v}");

    let mut altered = proof.clone();
    altered[1].timestamp_ms += 1;
    let (code, v, out) = run(&s, nobus, &altered, "n0,n1,n2", &topo);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!((v["first_bad_hop"].clone(), v["fault"]["kind"].clone()), (1.into(), "altered".into()), "{v}");
    let (code, v, _) = run(&s, nobus, &proof, "n0,nX,n2", &topo);
    assert_eq!((code, v["fault"]["kind"].clone(), v["first_bad_hop"].clone()), (Some(3), "wrong_node".into(), 1.into()), "{v}");
    let (code, v, _) = run(&s, nobus, &proof[..2], "n0,n1,n2", &topo);
    assert_eq!((code, v["fault"]["kind"].clone(), v["first_bad_hop"].clone()), (Some(3), "missing_hop".into(), 2.into()), "{v}");
    let bad = s.dir.path().join("bad.json");
    std::fs::write(&bad, "{\"not\": \"a proof\"}").unwrap();
    let o = cli(&s, None, &["nxos", "verify", "--path-id", "p1", "--proof", bad.to_str().unwrap(), "--route", "n0", "--topology", topo.to_str().unwrap(), "--bus", nobus]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a JSON array of path proofs"), "{}", text(&o));
}

#[test]
fn the_verdict_is_anchored_in_the_ledger_with_an_inclusion_proof() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let (proof, topo) = setup(s.dir.path());
    let bus = start_bus(&s, &[]);
    let store = s.dir.path().join("ledger");
    let ledger = common::serve(&s, &["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store", store.to_str().unwrap()]);
    let (code, v, out) = run(&s, &bus.address, &proof, "n0,n1,n2", &topo);
    assert_eq!(code, Some(0), "{out}");
    let height = v["ledger"]["height"].as_u64().unwrap_or_else(|| panic!("not anchored: {v}"));
    let (code, v2, _) = run(&s, &bus.address, &proof[..2], "n0,n1,n2", &topo);
    assert_eq!(code, Some(3));
    drop(ledger);
    let blocks: Value = serde_json::from_slice(&cli(&s, None, &["ledger", "show", "--store", store.to_str().unwrap(), "--category", "pof", "--json"]).stdout).unwrap();
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0]["action"].as_str(), blocks[1]["action"].as_str()), (Some("path-verified"), Some("path-refused")));
    assert_eq!(blocks[0]["data"]["proof_hash"], v["proof_hash"]);
    assert_eq!(blocks[1]["data"]["first_bad_hop"], v2["first_bad_hop"]);
    let o = cli(&s, None, &["ledger", "proof", "--store", store.to_str().unwrap(), "--height", &height.to_string(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
}
