//! Map value layouts shared with bpf/xdp_trust.c, as arrays of integers (which
//! aya reads and writes without any `unsafe`), and the fixed-point score.

use anyhow::{bail, Result};
use serde::Serialize;

/// Scores are fixed point: 1.0 is 1_000_000.
pub const SCORE_SCALE: u32 = 1_000_000;

/// Kernel return codes the program gives.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Settings flag: consult the exact-match cache in front of the tries.
pub const FLAG_CACHE: u32 = 1;

/// The maps, by the names they are pinned under.
pub mod maps {
    pub const VERSION: &str = "drx_version";
    pub const SETTINGS: &str = "drx_settings";
    pub const TRIE4: [&str; 2] = ["drx_trie4_0", "drx_trie4_1"];
    pub const TRIE6: [&str; 2] = ["drx_trie6_0", "drx_trie6_1"];
    pub const NODES: [&str; 2] = ["drx_nodes_0", "drx_nodes_1"];
    pub const CACHE: &str = "drx_cache";
    pub const STATS: &str = "drx_stats";
    pub const PREFIX_STATS: &str = "drx_prefix_stats";
    pub const GRACE: &str = "drx_grace";
    pub const GRACE_TOKEN: &str = "drx_grace_token";
}

/// Capacity of the tries (per generation, shared by both families) and of
/// the per-prefix counters; MAX_PREFIXES in the C source.
pub const MAX_PREFIXES: u32 = 131_072;

/// `struct settings`: threshold, unknown_verdict, default_verdict, flags, applied (u64, little endian).
pub type RawSettings = [u32; 6];
/// `struct route`: node_id, slot.
pub type RawRoute = [u32; 2];
/// `struct counter`: packets, bytes.
pub type RawCounter = [u64; 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Drop,
}

impl Verdict {
    pub fn raw(self) -> u32 {
        match self {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
        }
    }

    /// As written in drx-data.toml and on the command line (what `FromStr` reads).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
        }
    }

    fn from_raw(raw: u32) -> Result<Self> {
        match raw {
            XDP_PASS => Ok(Verdict::Pass),
            XDP_DROP => Ok(Verdict::Drop),
            other => bail!("settings map holds verdict {other}, which is neither XDP_PASS nor XDP_DROP"),
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pass" => Ok(Verdict::Pass),
            "drop" => Ok(Verdict::Drop),
            other => bail!("verdict '{other}' is not one of: pass, drop"),
        }
    }
}

/// What the program decides by, one copy per generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Fixed point; destinations scoring below it are dropped.
    pub threshold: u32,
    /// For destinations no prefix covers (or whose node has no score).
    pub unknown_verdict: Verdict,
    /// For frames the program cannot parse.
    pub default_verdict: Verdict,
    pub cache: bool,
    /// The version this generation was last brought up to; user space only.
    #[serde(skip)]
    pub applied: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            threshold: SCORE_SCALE / 2,
            unknown_verdict: Verdict::Pass,
            default_verdict: Verdict::Pass,
            cache: true,
            applied: 0,
        }
    }
}

impl Settings {
    pub fn to_raw(self) -> RawSettings {
        [
            self.threshold,
            self.unknown_verdict.raw(),
            self.default_verdict.raw(),
            if self.cache { FLAG_CACHE } else { 0 },
            self.applied as u32,
            (self.applied >> 32) as u32,
        ]
    }

    /// None for an all-zero entry: maps that no one has initialised yet.
    pub fn from_raw(raw: RawSettings) -> Result<Option<Self>> {
        if raw == [0; 6] {
            return Ok(None);
        }
        Ok(Some(Settings {
            threshold: raw[0],
            unknown_verdict: Verdict::from_raw(raw[1])?,
            default_verdict: Verdict::from_raw(raw[2])?,
            cache: raw[3] & FLAG_CACHE != 0,
            applied: u64::from(raw[4]) | (u64::from(raw[5]) << 32),
        }))
    }
}

/// Why the program gave its verdict: the index into drx_stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Trusted,
    LowTrust,
    Unknown,
    NotIp,
    Malformed,
    Unparsed,
    CacheHit,
    CacheMiss,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Trusted,
        Reason::LowTrust,
        Reason::Unknown,
        Reason::NotIp,
        Reason::Malformed,
        Reason::Unparsed,
        Reason::CacheHit,
        Reason::CacheMiss,
    ];

    pub fn index(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Trusted => "trusted",
            Reason::LowTrust => "low_trust",
            Reason::Unknown => "unknown",
            Reason::NotIp => "not_ip",
            Reason::Malformed => "malformed",
            Reason::Unparsed => "unparsed",
            Reason::CacheHit => "cache_hit",
            Reason::CacheMiss => "cache_miss",
        }
    }
}

/// Parses a trust score written as a number in 0..=1 ("0.85", "1", "0").
pub fn parse_score(text: &str) -> Result<u32> {
    let value: f64 = match text.trim().parse() {
        Ok(v) => v,
        Err(_) => bail!("score '{text}' is not a number; write it as a fraction in 0..1, like 0.85"),
    };
    score_from_f64(value).map_err(|e| anyhow::anyhow!("score '{text}': {e}"))
}

/// Converts a score in 0..=1 to fixed point, refusing NaN and out-of-range values.
pub fn score_from_f64(value: f64) -> Result<u32> {
    if !value.is_finite() {
        bail!("not a finite number");
    }
    if !(0.0..=1.0).contains(&value) {
        bail!("{value} is outside 0..1");
    }
    Ok((value * f64::from(SCORE_SCALE)).round() as u32)
}

pub fn score_to_f64(fixed: u32) -> f64 {
    f64::from(fixed) / f64::from(SCORE_SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_parse_to_fixed_point() {
        assert_eq!(parse_score("0.85").unwrap(), 850_000);
        assert_eq!(parse_score("1").unwrap(), 1_000_000);
        assert_eq!(parse_score("0").unwrap(), 0);
        assert_eq!(parse_score("0.0000004").unwrap(), 0);
        assert_eq!(parse_score("0.0000005").unwrap(), 1);
        for bad in ["1.01", "-0.1", "NaN", "inf", "", "0.5x"] {
            assert!(parse_score(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_score("1.5").unwrap_err().to_string().contains("outside 0..1"));
    }

    #[test]
    fn settings_round_trip_and_zero_means_uninitialised() {
        let s = Settings { threshold: 300_000, unknown_verdict: Verdict::Drop, default_verdict: Verdict::Pass, cache: false, applied: (7 << 32) | 9 };
        assert_eq!(Settings::from_raw(s.to_raw()).unwrap(), Some(s));
        assert_eq!(Settings::from_raw([0; 6]).unwrap(), None);
        assert!(Settings::from_raw([1, 0, 2, 0, 1, 0]).is_err());
    }

    #[test]
    fn reasons_index_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i as u32);
        }
    }
}
