//! `bpi-os nxos verify`: a path proof (seed 003's per-hop PathProof chain,
//! docs/pof.md) checked against the route, the Meta-RIB's identities and
//! trust; the verdict and the proof's hash anchored in the ledger. Exit 0
//! valid, 3 invalid, 1 error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bpi_drx_control::{engine::Engine, model::Topology, DEFAULT_TOPOLOGY};
use bpi_pof::chain::{self, Expect, PathProof};
use bpi_qlock::identity::PublicIdentity;
use bpi_support::exit::Failure;
use clap::Args;

use crate::output::Json;

#[derive(Args)]
pub struct VerifyArgs {
    /// The path's id, as its proofs carry it.
    #[arg(long)]
    path_id: String,
    /// The proof: a JSON array of the hops' PathProofs, source first.
    #[arg(long, value_name = "FILE")]
    proof: PathBuf,
    /// The route the control plane chose: node ids, comma-separated, source first.
    #[arg(long, value_delimiter = ',', required = true)]
    route: Vec<String>,
    /// The least trust every hop must have (default: the Meta-RIB's blacklist threshold).
    #[arg(long)]
    required_trust: Option<f64>,
    /// Check every hop's hybrid signature (always done; the seed's flag, kept for its scripts).
    #[arg(long)]
    cryptographic: bool,
    /// The Meta-RIB: identities, and the trust used when the control plane does not answer.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_TOPOLOGY)]
    topology: PathBuf,
    /// The D-Bus address of the control plane and the ledger (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    bus: Option<String>,
    #[command(flatten)]
    json: Json,
}

/// Proofs larger than this are not proofs of any path bpi-os routes.
const MAX_PROOF_BYTES: u64 = 4 << 20;

pub fn verify(args: VerifyArgs) -> Result<()> {
    let _ = args.cryptographic;
    let text = bpi_support::fsmode::read_small(&args.proof, MAX_PROOF_BYTES).with_context(|| format!("reading {}", args.proof.display()))?;
    let proof: Vec<PathProof> = serde_json::from_slice(&text).with_context(|| format!("{}: not a JSON array of path proofs", args.proof.display()))?;
    let topo = Topology::load(&args.topology)?;
    let mut identities = BTreeMap::new();
    for n in &topo.nodes {
        if let Some(i) = &n.identity {
            identities.insert(n.id.clone(), PublicIdentity::from_base64(i).with_context(|| format!("node '{}': identity", n.id))?);
        }
    }
    let required = args.required_trust.unwrap_or(topo.settings.blacklist_threshold);
    anyhow::ensure!((0.0..=1.0).contains(&required), "--required-trust {required}: give a number from 0 to 1");
    // Trust as the control plane has it now, else as the file scores it.
    let (trust_source, view) = match bpi_drx_control::service::connect(args.bus.as_deref()).and_then(|(_c, p)| p.topology().ok()) {
        Some(v) => ("control plane", v),
        None => ("Meta-RIB file", Engine::new(topo.clone(), BTreeMap::new(), None).topology_view()),
    };
    let trust: BTreeMap<String, f64> = view.nodes.into_iter().map(|n| (n.id, n.trust)).collect();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let e = Expect { path_id: &args.path_id, route: &args.route, identities: &identities, trust: &trust, required_trust: required, now_ms, lifetime_ms: chain::DEFAULT_LIFETIME_MS };
    let v = chain::verify(&proof, &e);
    let data = serde_json::json!({
        "path_id": v.path_id, "valid": v.valid, "hops": v.hops, "first_bad_hop": v.first_bad_hop,
        "reason": v.reason, "proof_hash": v.proof_hash, "route": args.route, "trust_source": trust_source,
    });
    let anchored = bpi_ledger::service::append_via_service(args.bus.as_deref(), "pof", if v.valid { "path-verified" } else { "path-refused" }, &data.to_string());
    let anchor = match &anchored {
        Ok(Some((height, hash))) => serde_json::json!({ "height": height, "block_hash": hash, "inclusion_proof": format!("bpi-os ledger proof --height {height}") }),
        Ok(None) => serde_json::json!({ "note": "not recorded in the ledger: bpi-ledger.service is not on the bus" }),
        Err(e) => serde_json::json!({ "note": format!("not recorded in the ledger: {e:#}") }),
    };
    if args.json.on() {
        let mut out = data.clone();
        out["fault"] = serde_json::to_value(&v.fault)?;
        out["ledger"] = anchor;
        args.json.print(&out)?;
    } else {
        println!("path {}: {} ({} hops, proof {})", v.path_id, if v.valid { "valid" } else { "INVALID" }, v.hops, v.proof_hash);
        match v.first_bad_hop {
            Some(h) => println!("first bad hop: {h} ({}): {}", args.route.get(h).map_or("-", String::as_str), v.reason),
            None => println!("{}", v.reason),
        }
        println!("ledger: {anchor}");
    }
    if !v.valid {
        return Err(Failure::CheckFailed(format!("path {} does not verify: {}", v.path_id, v.reason)).into());
    }
    Ok(())
}
