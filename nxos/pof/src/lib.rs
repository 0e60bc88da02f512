//! Proof-of-forward (seed 003, "Proof-of-Forward System"): proof that
//! traffic took the path the control plane chose. [`chain`] holds the
//! seed's per-hop `PathProof` as a signed hash chain and its verification;
//! [`stamp`] the per-packet hop stamps the XDP program is to write and check.
//! docs/pof.md says what is built and what is not yet.

pub mod chain;
pub mod stamp;
