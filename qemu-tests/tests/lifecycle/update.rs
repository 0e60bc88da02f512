//! A/B updates on the installed disk. Version N (what was installed) boots;
//! N+1 and N+2 (built by `cargo xtask test` with a patch version up, N+2
//! with a boot health check that fails) are served over HTTP from the host,
//! at the user network's gateway. Bad bundles are refused with the inactive
//! slot unchanged; an apply killed in the middle of its write leaves N
//! booting; the re-run installs N+1 (and its BIOS path: GRUB's files and
//! trial), which boots with the data, ledger, store and host keys of N;
//! `bpi-os update rollback` goes back to N; N+2, installed with two tries
//! over N+1, fails its health check on both until systemd-boot falls back
//! to N by itself. (The same under BIOS: the SeaBIOS test in tests/boot.)

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpi_formats::update::{Metadata, Role, METADATA};
use bpi_ledger::checkpoint::{NoteSigner, NoteVerifier};
use bpi_qemu_tests::httpd::{Fault, Server};
use bpi_qemu_tests::image_dir;
use bpi_qemu_tests::updates::{apply, manifest, status, updates_dir, wait_version};
use bpi_qemu_tests::vm::{Machine, Vm, VmOptions};
use serde_json::Value;

use crate::install::{self, Installed};

fn dev_signer() -> Result<NoteSigner> {
    let text = std::fs::read_to_string(bpi_image::bundle::key_path()?)?;
    Ok(NoteSigner::parse_skey(&text)?)
}

/// A bundle directory on the server: links to `good`'s files, with the
/// metadata replaced (re-signed by `signer` after `edit`) and/or one file
/// replaced by a copy with a byte flipped.
/// Re-signs the metadata with a key after an edit.
type Resign<'a> = (&'a NoteSigner, &'a dyn Fn(&mut Metadata));

fn variant(root: &Path, name: &str, good: &Path, edit: Option<Resign>, flip: Option<Role>) -> Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let note = std::fs::read_to_string(good.join(METADATA))?;
    let m = Metadata::parse(&NoteVerifier::parse_vkey(&dev_signer()?.verifier().to_vkey())?.open(&note)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    for f in &m.files {
        if Some(f.role) == flip {
            let mut bytes = std::fs::read(good.join(&f.name))?;
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            std::fs::write(dir.join(&f.name), bytes)?;
        } else {
            std::os::unix::fs::symlink(good.join(&f.name), dir.join(&f.name))?;
        }
    }
    match edit {
        Some((signer, edit)) => {
            let mut m = m.clone();
            edit(&mut m);
            std::fs::write(dir.join(METADATA), signer.sign_text(&m.to_text())?)?;
        }
        None => std::os::unix::fs::symlink(good.join(METADATA), dir.join(METADATA))?,
    }
    Ok(())
}

/// What slot B looks like from inside: its table entry and first 4 MiB.
fn slot_b(vm: &Vm) -> Result<String> {
    vm.sh("for p in /dev/vda4 /dev/vda5; do blkid -p -o export $p | grep ^PART_ENTRY_ || true; head -c 4M $p | sha256sum; done")
}

fn refused(vm: &Vm, before: &str, args: &str, code: i64, says: &str) -> Result<()> {
    let (c, out) = apply(vm, args)?;
    ensure!(c == code && out.contains(says), "`apply {args}`: want exit {code} and {says:?}, got {c}:\n{out}");
    let after = slot_b(vm)?;
    ensure!(after == before, "slot B changed after a refused update ({args}):\n{before}\n---\n{after}");
    eprintln!("refused as expected: apply {args}: {}", out.lines().rev().find(|l| l.contains("error")).unwrap_or("").trim());
    Ok(())
}

/// Boots the installed disk (its checks in `install::check_installed`) and
/// takes it through the updates.
pub fn updates_on_the_installed_disk(installed: &Installed) -> Result<()> {
    let n = manifest(&image_dir())?;
    let next_dir = updates_dir().join("next");
    let broken_dir = updates_dir().join("broken");
    let (n1, n2) = (manifest(&next_dir)?, manifest(&broken_dir)?);
    eprintln!("versions: N {} (the image), N+1 {}, N+2 {} (fails its health check)", n.version, n1.version, n2.version);

    // The server: the good bundles and the bad variants of N+1's.
    let www = tempfile::tempdir()?;
    let good = next_dir.join("update");
    std::os::unix::fs::symlink(&good, www.path().join("next"))?;
    std::os::unix::fs::symlink(broken_dir.join("update"), www.path().join("broken"))?;
    let dev = dev_signer()?;
    let stranger = NoteSigner::from_seed(bpi_image::bundle::DEV_KEY_NAME, *b"not the key the node trusts 0123")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    variant(www.path(), "unknown-key", &good, Some((&stranger, &|_| {})), None)?;
    variant(www.path(), "expired", &good, Some((&dev, &|m| {
        m.issued = now - 40 * 86400;
        m.expires = now - 10 * 86400;
    })), None)?;
    variant(www.path(), "older", &good, Some((&dev, &|m| m.version = "0.0.1".into())), None)?;
    variant(www.path(), "tampered-root", &good, None, Some(Role::Root))?;
    variant(www.path(), "tampered-uki", &good, None, Some(Role::Uki))?;
    let server = Server::start(www.path().to_path_buf())?;

    let mut opts = VmOptions::new(installed.disk.clone());
    opts.tpm_state = Some(installed.tpm.clone());
    opts.host_access = true;
    opts.allow_reboot = true;
    opts.disk_size = "6G";
    let machine = Machine::new(opts)?;
    let sock = machine.dir.path().join("qga.sock");
    let mut vm = machine.start(1)?;
    vm.wait_booted()?;
    vm.check_logs()?;
    install::check_installed(&vm)?;
    // A hang resets the machine: PID 1 runs the hardware watchdog (q35's TCO).
    ensure!(vm.sh("systemctl show -p RuntimeWatchdogUSec --value")?.trim() == "2min", "the runtime watchdog is not set");
    let wd = vm.sh("journalctl -b -o cat | grep -i 'hardware watchdog' || true")?;
    ensure!(!wd.trim().is_empty(), "PID 1 found no hardware watchdog");
    eprintln!("watchdog: {}", wd.lines().next().unwrap_or("").trim());

    // N as installed: slot A runs, slot B is empty, the health check passed.
    let st = status(&vm)?;
    ensure!(st["running_version"] == n.version.as_str() && st["running_slot"] == "a", "{st}");
    ensure!(st["slots"][1]["version"].is_null(), "slot B is not empty: {st}");
    ensure!(st["health"]["healthy"] == true, "N's health check: {st}");
    ensure!(st["entries"][0]["file"] == format!("bpi-os_{}.efi", n.version), "{st}");
    vm.sh("echo kept-across-updates > /bpi/data/marker && mkdir -p /bpi/data/encrypted/t && echo secret > /bpi/data/encrypted/t/f && sync")?;
    let host_key = vm.sh("cat /etc/ssh/ssh_host_ed25519_key.pub")?;
    let store = vm.sh("bpi-os store status --json")?;
    ensure!(store.contains("\"mounted\": true"), "N has no mounted store to keep: {store}");

    // Bad input: refused, slot B as it was.
    let before = slot_b(&vm)?;
    let url = |d: &str| server.guest_url(d);
    refused(&vm, &before, &format!("--from {}", url("unknown-key")), 3, "not signed by a key this node trusts")?;
    refused(&vm, &before, &format!("--from {}", url("expired")), 3, "expired")?;
    refused(&vm, &before, &format!("--from {}", url("older")), 3, "--allow-downgrade")?;
    let (c, plan) = apply(&vm, &format!("--from {} --allow-downgrade --dry-run", url("older")))?;
    ensure!(c == 0 && plan.contains("nothing was changed"), "dry run of a downgrade: {c} {plan}");
    // No space: the data partition filled to 50 MiB short of the download.
    vm.sh("avail=$(df --output=avail -B1 /var | tail -1); fallocate -l $((avail - 50*1024*1024)) /var/fill")?;
    refused(&vm, &before, &format!("--from {}", url("next")), 1, "not enough space")?;
    vm.sh("rm /var/fill")?;
    // A server that sends more than the signed size.
    let verity_name = format!("bpi-os_{}.root.verity", n1.version);
    server.set_fault(Fault::Extra { file: verity_name.clone(), bytes: 1 << 20 });
    refused(&vm, &before, &format!("--from {}", url("next")), 1, "sent more than")?;
    server.set_fault(Fault::None);
    refused(&vm, &before, &format!("--from {}", url("tampered-uki")), 1, "altered or corrupted")?;
    vm.sh("rm -rf /var/lib/bpi-os/update/download")?;
    refused(&vm, &before, &format!("--from {}", url("tampered-root")), 1, "altered or corrupted")?;
    // A download cut short is kept, and the next run resumes it.
    let root_name = format!("bpi-os_{}.root.erofs", n1.version);
    server.set_fault(Fault::CutAfter { file: root_name.clone(), bytes: 100 << 20 });
    refused(&vm, &before, &format!("--from {}", url("next")), 1, "resume")?;
    server.set_fault(Fault::None);

    // Killed in the middle of writing the slot: slot B is retired, the
    // running version still boots, and a re-run (after that reboot) completes.
    // Killed as soon as the write starts: with the lean root the whole write,
    // read-back and activation took under the 3 s this once waited.
    let killed = vm.sh_for(
        &format!(
            "bpi-os update apply --from {} > /tmp/apply.log 2>&1 & pid=$!; \
             while ! grep -q '^\\[update\\] write bpi-os_.*root.erofs' /tmp/apply.log; do kill -0 $pid || break; sleep 0.1; done; \
             kill -9 $pid; wait $pid; cat /tmp/apply.log",
            url("next")
        ),
        Duration::from_secs(1800),
    )?;
    ensure!(killed.stdout.contains("write bpi-os_"), "the apply did not reach its write: {}", killed.stdout);
    let resumed = server.requests().iter().any(|r| r.path.ends_with(&root_name) && r.range_from.is_some_and(|f| f > 0) && r.status == 206);
    ensure!(resumed, "the cut download was not resumed with a range request: {:?}", server.requests());
    let st = status(&vm)?;
    ensure!(st["slots"][1]["version"].is_null() && st["running_slot"] == "a", "after the killed apply: {st}");
    let after_kill = slot_b(&vm)?;
    ensure!(after_kill.contains("PART_ENTRY_NAME=_empty") && after_kill != before, "slot B after the killed apply should be labelled empty with its writing begun:\n{before}\n---\n{after_kill}");
    let _ = vm.sh_any("systemctl --no-block reboot");
    std::thread::sleep(Duration::from_secs(10));
    wait_version(&vm, &sock, &n.version, Duration::from_secs(900))?;
    vm.check_logs()?;
    let st = status(&vm)?;
    ensure!(st["running_slot"] == "a" && st["slots"][1]["version"].is_null() && st["health"]["healthy"] == true, "N after the killed apply and a reboot: {st}");
    ensure!(vm.sh("cat /bpi/data/marker")?.trim() == "kept-across-updates", "/bpi/data lost its file across a reboot");
    ensure!(vm.sh("cat /bpi/data/encrypted/t/f")?.trim() == "secret", "the store lost its file across a reboot, or the TPM2 did not unlock it");

    // The reference: dd of the same bytes to the same partitions.
    let dl = format!("/var/lib/bpi-os/update/download/{}", n1.version);
    let dd = vm.sh(&format!(
        "s=$(date +%s.%N); dd if={dl}/{root_name} of=/dev/vda4 bs=4M oflag=direct conv=fsync status=none && dd if={dl}/{verity_name} of=/dev/vda5 bs=4M oflag=direct conv=fsync status=none; e=$(date +%s.%N); awk \"BEGIN {{ print $e - $s }}\""
    ))?;
    let dd_secs: f64 = dd.trim().parse().with_context(|| format!("dd timing: {dd}"))?;

    let (c, out) = apply(&vm, &format!("--from {} --json", url("next")))?;
    ensure!(c == 0, "apply N+1 failed: {out}");
    let json_start = out.find("{\n").context("no JSON from apply")?;
    let applied: Value = serde_json::from_str(&out[json_start..])?;
    let write_secs = applied["write_seconds"].as_f64().context("write_seconds")?;
    let verify_secs = applied["verify_seconds"].as_f64().context("verify_seconds")?;
    eprintln!(
        "FIGURE update apply, download excluded: {} bytes written in {write_secs:.1}s (dd of the same bytes to the same partitions: {dd_secs:.1}s, ratio {:.2}), read back and hashed in {verify_secs:.1}s (write + check vs dd: ratio {:.2})",
        applied["bytes_written"],
        write_secs / dd_secs,
        (write_secs + verify_secs) / dd_secs
    );
    let st = status(&vm)?;
    ensure!(st["slots"][1]["version"] == n1.version.as_str(), "slot B after apply: {st}");
    ensure!(st["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["file"] == format!("bpi-os_{}+3.efi", n1.version))), "no counted UKI: {st}");
    // The BIOS path in step: GRUB's trial of N+1, N still its saved entry.
    ensure!(st["bios"]["trial"] == n1.version.as_str() && st["bios"]["tries_left"] == 3 && st["bios"]["saved"] == n.version.as_str(), "GRUB's state after the apply: {st}");
    let cfg = vm.sh("cat /boot/grub/grub.cfg")?;
    ensure!(cfg.contains(&format!("linux /bios/{}/vmlinuz roothash={} ", n1.version, n1.root_hash)), "grub.cfg has no entry for N+1:\n{cfg}");

    // Reboot into N+1.
    let t = Instant::now();
    let _ = vm.sh_any("systemctl --no-block reboot");
    let up = wait_version(&vm, &sock, &n1.version, Duration::from_secs(900))?;
    eprintln!("FIGURE reboot into the update to multi-user on N+1 (TCG): {:.1}s", t.elapsed().as_secs_f64().max(up.as_secs_f64()));
    let root = vm.sh("cat /proc/cmdline")?;
    ensure!(root.contains(&format!("roothash={}", n1.root_hash)), "N+1 booted another root: {root}");
    let st = status(&vm)?;
    ensure!(st["running_slot"] == "b" && st["slots"][0]["version"] == n.version.as_str(), "{st}");
    ensure!(st["health"]["healthy"] == true, "N+1's health: {st}");
    ensure!(st["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["file"] == format!("bpi-os_{}.efi", n1.version))), "N+1's entry was not blessed: {st}");
    ensure!(st["bios"]["saved"] == n1.version.as_str() && st["bios"]["trial"].is_null(), "GRUB's saved entry was not blessed: {st}");
    ensure!(vm.sh("cat /bpi/data/marker")?.trim() == "kept-across-updates", "the data partition was not kept");
    ensure!(vm.sh("cat /bpi/data/encrypted/t/f")?.trim() == "secret", "the store was not kept");
    ensure!(vm.sh("cat /etc/ssh/ssh_host_ed25519_key.pub")? == host_key, "the SSH host key changed");
    vm.sh("bpi-os ledger verify")?;
    let ledger = vm.sh("bpi-os ledger show --json")?;
    for action in ["update-retired", "update-written", "update-installed", "update-blessed", "health-passed"] {
        ensure!(ledger.contains(&format!("\"{action}\"")), "the ledger has no {action}");
    }
    ensure!(ledger.contains(&n1.version), "the ledger does not name {}", n1.version);
    // Nothing newer: up to date (what bpi-update.service runs), and the timer off by default.
    for cmd in [format!("bpi-os update check --from {}", url("next")), format!("bpi-os update apply --if-newer --from {}", url("next"))] {
        let out = vm.sh(&cmd)?;
        ensure!(out.contains("up to date"), "{cmd}: {out}");
    }
    ensure!(vm.sh_any("systemctl is-enabled bpi-update.timer")?.stdout.trim() == "disabled", "bpi-update.timer is enabled by default");

    // Rollback on purpose: back to N (slot A). GRUB's saved entry moves
    // with systemd-boot's default (the BIOS path kept in step).
    let out = vm.sh("bpi-os update rollback --dry-run")?;
    ensure!(out.contains("nothing was changed"), "{out}");
    let out = vm.sh("bpi-os update rollback --json")?;
    ensure!(out.contains(&format!("\"to\": \"{}\"", n.version)), "rollback: {out}");
    let _ = vm.sh_any("systemctl --no-block reboot");
    std::thread::sleep(Duration::from_secs(10));
    wait_version(&vm, &sock, &n.version, Duration::from_secs(900))?;
    let st = status(&vm)?;
    ensure!(st["running_slot"] == "a" && st["default_entry"].as_str().is_some_and(|d| d.contains(n.version.as_str())), "after rollback to N: {st}");
    ensure!(st["bios"]["saved"] == n.version.as_str() && st["bios"]["trial"].is_null(), "GRUB's saved entry after the rollback: {st}");
    ensure!(vm.sh("bpi-os ledger show --json")?.contains("\"update-rollback\""), "no update-rollback record");

    // N+2, into slot B over N+1, fails its health check on every try;
    // systemd-boot falls back to N. Two tries instead of the default three:
    // one boot fewer under TCG, and still a retry counted down before the
    // fallback.
    let (c, out) = apply(&vm, &format!("--from {} --tries 2", url("broken")))?;
    ensure!(c == 0 && out.contains("2 tries before falling back"), "apply N+2 failed: {out}");
    let st = status(&vm)?;
    ensure!(st["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["file"] == format!("bpi-os_{}+2.efi", n2.version))), "N+2 was not installed with 2 tries: {st}");
    let t = Instant::now();
    let _ = vm.sh_any("systemctl --no-block reboot");
    std::thread::sleep(Duration::from_secs(20));
    wait_version(&vm, &sock, &n.version, Duration::from_secs(1800))?;
    eprintln!("FIGURE automatic rollback, from reboot into N+2 (two failed tries) to multi-user on N again (TCG): {:.1}s", t.elapsed().as_secs_f64());
    let st = status(&vm)?;
    let failed = st["failed"].as_array().cloned().unwrap_or_default();
    let f = failed.iter().find(|f| f["version"] == n2.version.as_str()).with_context(|| format!("status names no failed {}: {st}", n2.version))?;
    ensure!(f["out_of_tries"] == true && f["reasons"].as_str().is_some_and(|r| r.contains("bpi-drx-data.service")), "{f}");
    ensure!(f["failed_boots"].as_u64() == Some(2), "N+2 failed {} boots, not its 2 tries: {f}", f["failed_boots"]);
    let text = vm.sh("bpi-os status")?;
    ensure!(text.contains(&format!("{} FAILED", n2.version)), "bpi-os status does not say N+2 failed:\n{text}");
    ensure!(vm.sh("bpi-os ledger show --json")?.contains("\"health-failed\""), "no health-failed record");
    vm.sh("bpi-os ledger verify")?;
    // Slot B now holds the failed N+2: no rolling back to it.
    let out = vm.sh_any("bpi-os update rollback 2>&1")?;
    ensure!(out.code == 3 && out.stdout.contains("used up its boot tries"), "rollback to a failed version: {} {}", out.code, out.stdout);
    vm.poweroff()?;
    Ok(())
}
