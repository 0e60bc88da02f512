//! `bpi-os health`: is this boot what a bpi-os node must be? With `--boot`
//! (bpi-health.service), the result is recorded in the ledger and on the
//! data partition; a healthy boot blesses its UKI, and a failed boot of a
//! version that still has tries reboots, so systemd-boot can count it and
//! fall back on its own.

use std::path::Path;

use anyhow::Result;
use bpi_ledger::{store, verify};
use bpi_support::exit::Failure;
use bpi_support::record::Recorder;
use bpi_support::{progress, Cmd};
use bpi_update::health::{self, Check, Report};
use bpi_update::{apply, bios, esp};
use clap::Args;
use serde_json::json;

use crate::output::Json;

#[derive(Args)]
pub struct HealthArgs {
    /// Run as bpi-health.service does: record the result, bless this version's boot entry when healthy, reboot when not and it has tries left.
    #[arg(long)]
    boot: bool,
    #[command(flatten)]
    json: Json,
}

pub fn run(args: HealthArgs) -> Result<()> {
    let version = apply::running_version()?;
    let checks = gather();
    let dir = Path::new(health::HEALTH_DIR);
    let earlier = health::load(dir, &version);
    let report = Report::new(&version, checks, crate::update::now(), earlier.as_ref());
    let mut blessed = None;
    let mut rebooting = false;
    if args.boot {
        if let Err(e) = health::save(dir, &report) {
            progress::note(&format!("could not write the health report to {}: {e:#}", dir.display()));
        }
        let recorder = bpi_ledger::service::LedgerRecorder::new(None);
        let data = json!({"version": version, "healthy": report.healthy, "failed": report.reasons(), "failed_boots": report.failed_boots});
        progress::log(&format!("ledger: {}", recorder.record("health", if report.healthy { "health-passed" } else { "health-failed" }, &data)));
        let esp_dir = esp::find().ok();
        let counted = esp_dir.as_deref().and_then(|d| esp::entries(d).ok()).is_some_and(|es| es.iter().any(|e| e.version == version && e.tries_left.is_some()));
        if report.healthy {
            if let Some(d) = &esp_dir {
                blessed = esp::bless(d, &version)?;
                if let Some(name) = &blessed {
                    progress::log(&format!("ledger: {}", recorder.record("update", "update-blessed", &json!({"version": version, "step": "blessed", "uki": name}))));
                }
                if bios::present(d) {
                    bless_bios(d, &version, &recorder)?;
                }
            }
        } else {
            rebooting = counted;
        }
    }
    if args.json.on() {
        args.json.print(&json!({"report": report, "blessed": blessed, "rebooting": rebooting}))?;
    } else {
        for c in &report.checks {
            println!("{} {}: {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
        }
        println!("{}", if report.healthy { format!("bpi-os {version} is healthy") } else { format!("bpi-os {version} is NOT healthy") });
        if let Some(b) = &blessed {
            println!("boot entry blessed: {b}");
        }
    }
    if !report.healthy {
        if rebooting {
            // The entry has tries left: reboot so systemd-boot counts this
            // failed try, and after the last one boots the previous version.
            progress::note(&format!("bpi-os {version} failed its health check; rebooting so the boot counter falls back if it keeps failing"));
            Cmd::new("systemctl").arg("reboot").run()?;
        }
        return Err(Failure::CheckFailed(format!("bpi-os {version} failed its health check: {}", report.reasons())).into());
    }
    Ok(())
}

/// GRUB's side of the bless: this version becomes its saved entry. A trial
/// of another version that this boot ends used up its tries under BIOS
/// (GRUB fell back here): its UKI is marked so, as systemd-boot would have,
/// so that neither firmware nor a rollback picks it again.
fn bless_bios(esp_dir: &Path, version: &str, recorder: &dyn Recorder) -> Result<()> {
    let ended = bios::state(esp_dir)?.trial.filter(|t| t != version);
    if bios::bless(esp_dir, version)? {
        progress::log(&format!("ledger: {}", recorder.record("update", "update-blessed", &json!({"version": version, "step": "blessed", "grub_saved_entry": bpi_formats::grub::entry_id(version)}))));
    }
    if let Some(failed) = ended {
        if let Some(name) = esp::mark_failed(esp_dir, &failed)? {
            progress::note(&format!("{failed} used up its boot tries under BIOS; its boot entry is now {name}"));
            progress::log(&format!("ledger: {}", recorder.record("update", "update-out-of-tries", &json!({"version": failed, "step": "out-of-tries", "uki": name}))));
        }
    }
    Ok(())
}

fn gather() -> Vec<Check> {
    let mut checks = Vec::new();
    let verity = Cmd::new("veritysetup").args(["status", "root"]).output().ok();
    let v = crate::status::parse_verity(verity.as_deref());
    checks.push(Check {
        name: "verity root".into(),
        ok: v.active && v.state.as_deref().is_none_or(|s| s == "verified"),
        detail: match (v.active, v.state) {
            (true, Some(s)) => s,
            (true, None) => "active".into(),
            _ => "the root is not on an active dm-verity device".into(),
        },
    });
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let data = crate::status::find_mount(&mountinfo, "/bpi/data");
    checks.push(Check { name: "data partition".into(), ok: data.is_some(), detail: data.map_or("not mounted at /bpi/data".into(), |m| format!("{} on {}", m.fstype, m.source)) });
    let witness = store::witness_path(Path::new(store::DEFAULT_KEY));
    let ledger = verify::verify(Path::new(store::DEFAULT_DIR), None, Some(&witness));
    checks.push(match ledger {
        Ok(r) => Check { name: "ledger".into(), ok: r.ok, detail: if r.ok { "verifies".into() } else { r.render().lines().last().unwrap_or("does not verify").to_string() } },
        Err(e) => Check { name: "ledger".into(), ok: false, detail: format!("{e:#}") },
    });
    // Every unit the preset enables but this one (running while it checks),
    // in one `systemctl show` (a call per unit cost seconds of a TCG boot).
    let units: Vec<String> = bpi_formats::units::enabled().into_iter().filter(|u| u != "bpi-health.service").collect();
    match Cmd::new("systemctl").args(["show", "--property=Id,ActiveState,Type,ConditionResult"]).args(&units).output() {
        Ok(out) => {
            let states = health::parse_show(&out);
            for unit in &units {
                checks.push(match states.iter().find(|s| &s.unit == unit) {
                    Some(u) => health::unit_check(u),
                    None => Check { name: unit.clone(), ok: false, detail: "systemctl show says nothing of it".into() },
                });
            }
        }
        Err(e) => checks.extend(units.iter().map(|u| Check { name: u.clone(), ok: false, detail: format!("{e:#}") })),
    }
    checks
}
