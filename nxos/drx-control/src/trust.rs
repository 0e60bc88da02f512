//! Seed 003's trust score: uptime .25, security .35, performance .25,
//! reputation .15; security = vulnerabilities .3, patch level .25, incidents
//! .25, compliance .2. Each part and the result are clamped to 0..1.

use serde::{Deserialize, Serialize};

/// What a node's trust is computed from (docs/control-plane.md).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustInputs {
    /// Fraction of time up, 0..1.
    pub uptime: f64,
    /// Measured performance, 0..1.
    pub performance: f64,
    /// Community reputation, 0..1.
    pub reputation: f64,
    /// Known vulnerabilities (count; 100 or more scores 0).
    pub known_vulnerabilities: f64,
    /// Patch level, percent 0..100.
    pub patch_level: f64,
    /// Security incidents (count; 50 or more scores 0).
    pub security_incidents: f64,
    /// Compliance, percent 0..100.
    pub compliance: f64,
}

fn clamp01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

pub fn security_score(i: &TrustInputs) -> f64 {
    let vulnerability = clamp01(1.0 - i.known_vulnerabilities / 100.0);
    let patch = clamp01(i.patch_level / 100.0);
    let incidents = clamp01(1.0 - i.security_incidents / 50.0);
    let compliance = clamp01(i.compliance / 100.0);
    clamp01(vulnerability * 0.3 + patch * 0.25 + incidents * 0.25 + compliance * 0.2)
}

pub fn trust_score(i: &TrustInputs) -> f64 {
    clamp01(clamp01(i.uptime) * 0.25 + security_score(i) * 0.35 + clamp01(i.performance) * 0.25 + clamp01(i.reputation) * 0.15)
}

/// Scores many nodes at once (the engine's full recompute; the benchmark).
pub fn trust_scores(inputs: &[TrustInputs], out: &mut Vec<f64>) {
    out.clear();
    out.extend(inputs.iter().map(trust_score));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// The worked example of docs/control-plane.md, by hand:
    /// security = 0.3*(1-3/100) + 0.25*0.95 + 0.25*(1-1/50) + 0.2*0.9
    ///          = 0.291 + 0.2375 + 0.245 + 0.18 = 0.9535
    /// trust    = 0.25*0.99 + 0.35*0.9535 + 0.25*0.9 + 0.15*0.8
    ///          = 0.2475 + 0.333725 + 0.225 + 0.12 = 0.926225
    #[test]
    fn worked_example() {
        let i = TrustInputs { uptime: 0.99, performance: 0.9, reputation: 0.8, known_vulnerabilities: 3.0, patch_level: 95.0, security_incidents: 1.0, compliance: 90.0 };
        assert!(close(security_score(&i), 0.9535), "{}", security_score(&i));
        assert!(close(trust_score(&i), 0.926225), "{}", trust_score(&i));
    }

    #[test]
    fn extremes_and_clamping() {
        let best = TrustInputs { uptime: 1.0, performance: 1.0, reputation: 1.0, known_vulnerabilities: 0.0, patch_level: 100.0, security_incidents: 0.0, compliance: 100.0 };
        assert!(close(trust_score(&best), 1.0));
        let worst = TrustInputs { uptime: 0.0, performance: 0.0, reputation: 0.0, known_vulnerabilities: 100.0, patch_level: 0.0, security_incidents: 50.0, compliance: 0.0 };
        assert!(close(trust_score(&worst), 0.0));
        // 400 vulnerabilities count as 100: the part is clamped, not negative.
        let many = TrustInputs { known_vulnerabilities: 400.0, ..best };
        assert!(close(security_score(&many), 0.7));
        // A breach-free node with nothing else: security 0.3 + 0.25 = 0.55.
        let bare = TrustInputs { known_vulnerabilities: 0.0, security_incidents: 0.0, ..worst };
        assert!(close(security_score(&bare), 0.55));
        assert!(close(trust_score(&bare), 0.35 * 0.55));
    }
}
