//! Secure Boot with the image's own keys (docs/boot.md): enrollment
//! from Setup Mode by systemd-boot, the state as the guest sees it, the store
//! sealed under it refusing a changed boot chain, and a changed UKI refused
//! by the firmware.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bpi_qemu_tests::logscan::tail;
use bpi_qemu_tests::vm::{Machine, Vm, ENROLL_MESSAGE};

/// Boot 0 (the harness's, before the first boot of a signed disk under
/// OVMF): the firmware was in Setup Mode; systemd-boot found the image's key
/// set on the ESP, enrolled db, KEK and PK, and reset the machine without
/// starting anything.
pub fn check_enrolled(machine: &Machine) -> Result<()> {
    let log = machine.serial_log(0);
    ensure!(log.contains(ENROLL_MESSAGE), "systemd-boot did not enroll the image's keys:\n{}", tail(&log, 20));
    ensure!(!log.contains("Linux version"), "a kernel started during enrollment:\n{}", tail(&log, 20));
    Ok(())
}

/// The guest agrees that Secure Boot is on, in user mode, and the kernel
/// locked itself down because of it.
pub fn check_on(vm: &Vm) -> Result<()> {
    // The variables themselves (4 bytes of attributes, then the value):
    // Secure Boot on, and out of Setup Mode (a PK is enrolled).
    let vars = vm.sh("cd /sys/firmware/efi/efivars && od -An -tu1 SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c")?;
    let values: Vec<&str> = vars.split_whitespace().collect();
    ensure!(values.len() == 10 && values[4] == "1" && values[9] == "0", "SecureBoot and SetupMode read {vars:?}, not 1 and 0");
    let status: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os status --json")?)?;
    ensure!(status["boot"]["firmware"] == "uefi" && status["boot"]["secure_boot"] == "enabled", "bpi-os status: {}", status["boot"]);
    let lockdown = vm.sh("cat /sys/kernel/security/lockdown")?;
    ensure!(lockdown.contains("[integrity]"), "the kernel is not locked down (integrity) under Secure Boot: {lockdown}");
    ensure!(vm.serial().contains("UEFI Secure Boot is enabled"), "the EFI stub did not report Secure Boot");
    Ok(())
}

/// The store's TPM2 seal: PCR 7, and PCR 11 as signed by the UKI's PCR key
/// (`.pcrpkey`, which the initrd kept in /run/systemd with the signed
/// policy), the key of the test key set. The next boot unlocking proves the
/// signature; the lifecycle test's update, a UKI with other PCR 11 values
/// unlocking it without a reseal, proves what it is for.
pub fn check_signed_pcr_seal(vm: &Vm) -> Result<()> {
    let dump: serde_json::Value = serde_json::from_str(&vm.sh("cryptsetup luksDump --dump-json-metadata /dev/disk/by-partlabel/bpi-store")?)?;
    let tokens: Vec<&serde_json::Value> = dump["tokens"].as_object().map(|t| t.values().collect()).unwrap_or_default();
    let tpm = tokens.iter().find(|t| t["type"] == "systemd-tpm2").ok_or_else(|| anyhow::anyhow!("no systemd-tpm2 token: {}", dump["tokens"]))?;
    // (systemd 252 spells the public key's fields with underscores.)
    ensure!(
        tpm["tpm2-pcrs"] == serde_json::json!([7]) && tpm["tpm2_pubkey_pcrs"] == serde_json::json!([11]),
        "the seal is not PCR 7 plus a signed PCR 11 policy: pcrs {}, signed pcrs {}",
        tpm["tpm2-pcrs"],
        tpm["tpm2_pubkey_pcrs"]
    );
    let sealed_key = String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, tpm["tpm2_pubkey"].as_str().unwrap_or(""))?)?;
    let keys = bpi_image::secureboot::KeySet::open(&bpi_qemu_tests::secure_boot_keys())?;
    let want = std::fs::read_to_string(keys.pcr_public_key())?;
    ensure!(vm.sh("cat /run/systemd/tpm2-pcr-public-key.pem")? == want, "the UKI's PCR key in /run/systemd is not the key set's");
    ensure!(sealed_key == want, "the seal trusts another PCR key than the key set's:\n{sealed_key}");
    let sig: serde_json::Value = serde_json::from_str(&vm.sh("cat /run/systemd/tpm2-pcr-signature.json")?)?;
    ensure!(sig["sha256"].as_array().is_some_and(|a| !a.is_empty()), "no signed PCR 11 policy in /run/systemd: {sig}");
    Ok(())
}

/// Appends a new certificate to db, as rotating the db key starts: an
/// authenticated variable update signed by KEK (made on the host with the
/// test key set), written through efivarfs with the append attribute.
pub fn append_to_db(vm: &Vm) -> Result<()> {
    let work = tempfile::tempdir()?;
    let keys = bpi_image::secureboot::KeySet::open(&bpi_qemu_tests::secure_boot_keys())?;
    let auth = bpi_image::secureboot::db_append_update(&keys, work.path(), "bpi-os test rotated db")?;
    // efivarfs takes the attributes (NV|BS|RT|time-based auth|append: 0x67)
    // and the data in one write.
    let mut var = vec![0x67, 0, 0, 0];
    var.extend(std::fs::read(&auth)?);
    let b64 = bpi_support::Cmd::new("base64").arg("-w0").stdin_bytes(var).output()?;
    let db = "/sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f";
    let before = vm.sh(&format!("stat -c %s {db}"))?;
    vm.sh(&format!("echo {b64} | base64 -d > /run/db-append && chattr -i {db}; dd if=/run/db-append of={db} bs=1M status=none"))?;
    let after = vm.sh(&format!("stat -c %s {db}"))?;
    ensure!(after.trim().parse::<u64>()? > before.trim().parse::<u64>()?, "db did not grow: {} -> {} bytes", before.trim(), after.trim());
    Ok(())
}

/// Boot with Secure Boot on and a changed db: PCR 7 differs from the seal,
/// the store stays locked, the node says so, and the recovery key opens it
/// with the file written before inside. Then one byte of the UKI on the ESP
/// is changed for the next boot.
pub fn store_stays_locked_until_recovery(mut vm: Vm<'_>, recovery_key: &str, token: &str) -> Result<()> {
    let (took, state) = vm.wait_settled()?;
    eprintln!("FIGURE boot to settled with db changed: {:.1}s ({state})", took.as_secs_f64());
    // The store's unit fails, and the boot health check with it (it names
    // the unit); nothing else does.
    let failed = vm.sh("systemctl --failed --no-legend --plain")?;
    let units: Vec<&str> = failed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    ensure!(
        state == "degraded" && units.contains(&"bpi-store.service") && units.iter().all(|u| ["bpi-store.service", "bpi-health.service"].contains(u)),
        "with the boot chain changed, expected bpi-store.service (and the health check) to fail; state {state}, failed:\n{failed}"
    );
    if units.contains(&"bpi-health.service") {
        let health = vm.sh("journalctl -b -u bpi-health.service --no-pager -o cat")?;
        ensure!(health.contains("bpi-store.service"), "the health check failed for another reason:\n{health}");
    }
    let journal = vm.sh("journalctl -b -u bpi-store.service --no-pager -o cat")?;
    ensure!(journal.contains("the TPM2 would not unseal the store's key"), "bpi-store.service does not say why it failed:\n{journal}");
    let store: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os store status --json")?)?;
    ensure!(store["initialized"] == true && store["mounted"] == false && store["unlocked"] == false, "store: {store}");
    let status = vm.sh("bpi-os status")?;
    ensure!(status.contains("UEFI, Secure Boot enabled"), "Secure Boot is not on:\n{status}");
    ensure!(status.contains("encrypted store locked: the TPM2 did not unseal its key"), "`bpi-os status` does not say the store is locked:\n{status}");
    // An attempt with the TPM2 alone fails the same way, plainly.
    let again = vm.sh_any("bpi-os store unlock")?;
    ensure!(again.code != 0 && again.stderr.contains("would not unseal"), "`bpi-os store unlock` without a key: {} {}", again.code, again.stderr);

    vm.sh(&format!("umask 077; printf '%s' '{recovery_key}' > /run/recovery.key && bpi-os store unlock --recovery-key-file /run/recovery.key && rm /run/recovery.key"))?;
    ensure!(vm.sh("cat /bpi/data/encrypted/bpi-test")?.trim() == token, "the recovery key opened a store without the file written under Secure Boot");

    // One byte of the UKI's os-release section, on the ESP where the
    // firmware will read it next boot.
    let uki = vm.sh("ls /efi/EFI/Linux/*.efi /boot/efi/EFI/Linux/*.efi /boot/EFI/Linux/*.efi 2>/dev/null | head -1")?;
    let uki = uki.trim();
    ensure!(!uki.is_empty(), "no UKI found on the ESP from the guest");
    vm.sh(&format!(
        "off=$(grep -abo 'PRETTY_NAME=' {uki} | head -1 | cut -d: -f1) && test -n \"$off\" && printf 'X' | dd of={uki} bs=1 seek=$off conv=notrunc status=none && sync"
    ))?;
    vm.poweroff()
}

/// Boot with Secure Boot on after the UKI was changed: the firmware refuses
/// to start it (systemd-boot reports LoadImage's error) and no kernel runs.
pub fn changed_uki_is_refused(mut vm: Vm<'_>) -> Result<()> {
    let t = Instant::now();
    let refusal = loop {
        let log = vm.serial();
        if let Some(line) = log.lines().find(|l| l.contains("Security Violation") || l.contains("Access Denied")) {
            // (Without the console's colour escapes.)
            break line.find("Error loading").map_or(line, |at| &line[at..]).trim().to_string();
        }
        if log.contains("Linux version") || log.contains("EFI stub:") {
            bail!("the changed UKI was started under Secure Boot:\n{}", tail(&log, 20));
        }
        if vm.exited() || t.elapsed() > Duration::from_secs(600) {
            bail!("no refusal of the changed UKI on the console:\n{}", tail(&log, 20));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Some time for anything that would start after the refusal.
    std::thread::sleep(Duration::from_secs(10));
    ensure!(!vm.serial().contains("Linux version"), "a kernel started after the refusal");
    eprintln!("changed UKI under Secure Boot: refused with: {refusal}");
    Ok(())
}
