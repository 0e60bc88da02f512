//! One QEMU virtual machine booting a bpi-os disk under OVMF.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpi_support::cmd::Daemon;
use bpi_support::Cmd;

use crate::logscan;
use crate::qga::{Agent, ExecOutput};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF built with Secure Boot (it needs SMM to guard its variables).
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with no keys at all: Secure Boot in Setup Mode.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The machine's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF without SMM: the machine of most tests, its variables empty, so
    /// nothing is enforced (Debian's build would enforce keys if enrolled,
    /// but could not keep them from the OS).
    Ovmf,
    /// OVMF with Secure Boot and SMM guarding its variables: enforced once a
    /// PK is enrolled.
    OvmfSecureBoot,
    /// SeaBIOS, QEMU's (and Proxmox's) default: no pflash at all.
    SeaBios,
}

/// How long a boot may take under TCG before the harness gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

pub struct VmOptions {
    /// The disk to boot; the VM writes to a qcow2 overlay, never to this file.
    pub base: PathBuf,
    pub cpu: Option<String>,
    pub accel: String,
    /// Virtual size of the overlay (room for the data partition).
    pub disk_size: &'static str,
    /// More disks, after the boot disk, in order (the guest sees vdb, vdc, ...).
    pub extra_disks: Vec<ExtraDisk>,
    /// A software TPM2 (swtpm) keeping its state in this directory; machines
    /// given the same directory share one TPM, as one computer's disks do.
    pub tpm_state: Option<PathBuf>,
    /// A virtio NIC on QEMU's user network (restricted: no way out), with
    /// this host UDP port on 127.0.0.1 forwarded to the guest's 10.0.2.15 at
    /// the same port. None: no NIC at all.
    pub nic_udp_forward: Option<u16>,
    /// This host TCP port on 127.0.0.1 forwarded to the guest's sshd (port
    /// 22); a NIC is made for it as for `nic_udp_forward`.
    pub ssh_forward: Option<u16>,
    /// The NIC's MAC address (Proxmox gives each NIC a fixed one).
    pub mac: Option<String>,
    /// An ISO attached as an IDE CD-ROM on the q35 AHCI controller, as
    /// Proxmox attaches its cloud-init drive (ide2).
    pub cdrom: Option<PathBuf>,
    /// `-smbios` values (type 11 strings carry systemd credentials).
    pub smbios: Vec<String>,
    /// A NIC on the user network that may reach the host (restrict=off):
    /// the host's 127.0.0.1 is the gateway, 10.0.2.2, for the guest.
    pub host_access: bool,
    /// Let the guest reboot (no -no-reboot): QEMU keeps running across
    /// reboots, as a machine does when its boot counter falls back.
    pub allow_reboot: bool,
    pub firmware: Firmware,
}

/// A raw file attached as a virtio disk and written in place (no overlay).
#[derive(Clone, Debug)]
pub struct ExtraDisk {
    pub file: PathBuf,
    /// The guest finds it as /dev/disk/by-id/virtio-SERIAL.
    pub serial: String,
    pub read_only: bool,
}

impl VmOptions {
    pub fn new(base: PathBuf) -> VmOptions {
        VmOptions {
            base,
            cpu: None,
            accel: std::env::var("BPI_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into()),
            disk_size: "4G",
            extra_disks: Vec::new(),
            tpm_state: None,
            nic_udp_forward: None,
            ssh_forward: None,
            mac: None,
            cdrom: None,
            smbios: Vec::new(),
            host_access: false,
            allow_reboot: false,
            firmware: Firmware::Ovmf,
        }
    }
}

/// A machine's files: overlay, firmware variables, serial log. Survives
/// power-offs so the same disk can be booted again.
pub struct Machine {
    pub dir: tempfile::TempDir,
    pub opts: VmOptions,
}

pub struct Vm<'a> {
    machine: &'a Machine,
    child: Child,
    /// Held for its guard: swtpm runs while the machine does.
    _swtpm: Option<Daemon>,
    pub started: Instant,
    boot_no: u32,
}

impl Machine {
    pub fn new(opts: VmOptions) -> Result<Machine> {
        anyhow::ensure!(
            opts.base.is_file(),
            "{} does not exist: run `cargo xtask build-image` first",
            opts.base.display()
        );
        // BPI_QEMU_KEEP=1 keeps the machine's files (serial logs) for a post-mortem.
        let dir = tempfile::Builder::new().prefix("bpi-vm-").disable_cleanup(std::env::var_os("BPI_QEMU_KEEP").is_some()).tempdir()?;
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&opts.base)
            .arg(dir.path().join("disk.qcow2"))
            .arg(opts.disk_size)
            .run()?;
        std::fs::copy(OVMF_VARS, dir.path().join("vars.fd")).with_context(|| format!("copying {OVMF_VARS}"))?;
        Ok(Machine { dir, opts })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn serial_log(&self, boot_no: u32) -> String {
        std::fs::read_to_string(self.path(&format!("serial-{boot_no}.log"))).unwrap_or_default()
    }

    /// Powers the machine on; `boot_no` (from 1) names its serial log.
    /// Under OVMF, the first start of a disk whose ESP carries Secure Boot
    /// keys (a signed image) is preceded by boot 0, in which systemd-boot
    /// enrolls them (the variables start in Setup Mode) and resets, as a new
    /// machine does on its first boot; from then on Secure Boot is on.
    pub fn start(&self, boot_no: u32) -> Result<Vm<'_>> {
        anyhow::ensure!(boot_no > 0, "boot 0 is the harness's enrollment boot");
        if self.opts.firmware != Firmware::SeaBios && !self.path(ENROLLED).exists() && carries_secure_boot_keys(&self.opts.base)? {
            let mut vm = self.spawn(0)?;
            vm.wait_exit(Duration::from_secs(600))?;
            let log = vm.serial();
            anyhow::ensure!(
                log.contains(ENROLL_MESSAGE),
                "the disk carries Secure Boot keys, but boot 0 did not enroll them:\n{}",
                logscan::tail(&log, 20)
            );
            eprintln!("  boot 0: systemd-boot enrolled the image's Secure Boot keys ({:.1}s)", vm.started.elapsed().as_secs_f64());
            std::fs::write(self.path(ENROLLED), b"")?;
        }
        self.spawn(boot_no)
    }

    fn spawn(&self, boot_no: u32) -> Result<Vm<'_>> {
        let accel = effective_accel(&self.opts.accel);
        let sock = self.path("qga.sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new("qemu-system-x86_64");
        // -no-reboot: a guest that reboots (a panic with panic=N, a failed
        // boot's reboot) ends QEMU, and the harness sees it at once.
        let smm = if self.opts.firmware == Firmware::OvmfSecureBoot { ",smm=on" } else { "" };
        cmd.args(["-machine", &format!("q35{smm}"), "-accel", &accel, "-m", "2048", "-smp", "2", "-nodefaults", "-display", "none"]);
        if !self.opts.allow_reboot || boot_no == 0 {
            cmd.arg("-no-reboot");
        } else {
            // Let the ICH9 TCO watchdog reset the machine, as a real board's
            // does: systemd-shutdown arms it (10 min) before rebooting, and a
            // guest that hangs in shutdown then comes back by itself.
            cmd.args(["-global", "ICH9-LPC.noreboot=false"]);
        }
        let code = match self.opts.firmware {
            Firmware::Ovmf => Some(OVMF_CODE),
            Firmware::OvmfSecureBoot => {
                // Only SMM code may write the variables (the keys).
                cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                Some(OVMF_CODE_SECURE_BOOT)
            }
            Firmware::SeaBios => None,
        };
        if let Some(code) = code {
            cmd.args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}")])
                .args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", self.path("vars.fd").display())]);
        }
        cmd
            .args(["-drive", &format!("if=none,id=disk0,format=qcow2,file={}", self.path("disk.qcow2").display())])
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
            .args(["-serial", &format!("file:{}", self.path(&format!("serial-{boot_no}.log")).display())])
            .args(["-chardev", &format!("socket,path={},server=on,wait=off,id=qga0", sock.display())])
            .args(["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("qemu-{boot_no}.err")))?);
        if let Some(cpu) = &self.opts.cpu {
            cmd.args(["-cpu", cpu]);
        }
        let swtpm = match &self.opts.tpm_state {
            None => None,
            Some(state) => {
                let (child, ctrl) = start_swtpm(state, &self.path("swtpm.sock"))?;
                // CRB, not TIS: under TCG every TIS FIFO byte is a trapped MMIO
                // access, slow enough that the kernel's TPM timeouts fired.
                cmd.args(["-chardev", &format!("socket,id=chrtpm,path={}", ctrl.display())])
                    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]);
                Some(child)
            }
        };
        if self.opts.nic_udp_forward.is_none() && self.opts.ssh_forward.is_none() && !self.opts.host_access {
            cmd.args(["-nic", "none"]);
        } else {
            let mut netdev = format!("user,id=net0,restrict={}", if self.opts.host_access { "off" } else { "on" });
            if let Some(port) = self.opts.nic_udp_forward {
                netdev.push_str(&format!(",hostfwd=udp:127.0.0.1:{port}-10.0.2.15:{port}"));
            }
            if let Some(port) = self.opts.ssh_forward {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:22"));
            }
            let mac = self.opts.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default();
            cmd.args(["-netdev", &netdev]).args(["-device", &format!("virtio-net-pci,netdev=net0{mac}")]);
        }
        if let Some(iso) = &self.opts.cdrom {
            cmd.args(["-drive", &format!("if=none,id=cd0,media=cdrom,format=raw,readonly=on,file={}", iso.display())])
                .args(["-device", "ide-cd,drive=cd0,bus=ide.2"]);
        }
        for v in &self.opts.smbios {
            cmd.args(["-smbios", v]);
        }
        for (i, d) in self.opts.extra_disks.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            cmd.args(["-drive", &format!("if=none,id=extra{i},format=raw,file={}{ro}", d.file.display())])
                .args(["-device", &format!("virtio-blk-pci,drive=extra{i},serial={}", d.serial)]);
        }
        eprintln!("  $ {:?}", cmd);
        let child = cmd.spawn().context("starting qemu-system-x86_64")?;
        Ok(Vm { machine: self, child, _swtpm: swtpm, started: Instant::now(), boot_no })
    }
}

const ENROLLED: &str = "secure-boot-enrolled";
/// What systemd-boot prints when it enrolls a key set.
pub const ENROLL_MESSAGE: &str = "Enrolling secure boot keys from directory: \\loader\\keys\\auto";

/// Whether the disk's ESP holds a key set for systemd-boot to enroll (read
/// with mtools from the raw file, by the offset its GPT gives).
pub fn carries_secure_boot_keys(disk: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; bpi_formats::gpt::HEAD_BYTES as usize];
    std::fs::File::open(disk)?.read_exact_at(&mut head, 0).with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let (_, parts) = bpi_formats::gpt::parse_primary(&head)?;
    let esp = parts.iter().find(|p| p.type_guid == bpi_formats::gpt::types::ESP).context("the disk has no ESP")?;
    // mdir fails on a missing directory: an unsigned image.
    match Cmd::new("mdir").arg("-b").arg("-i").arg(format!("{}@@{}", disk.display(), esp.offset())).arg("::/loader/keys/auto").env("MTOOLS_SKIP_CHECK", "1").output() {
        Ok(listing) => Ok(listing.contains("PK.auth")),
        Err(bpi_support::cmd::CmdError::Failed { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// KVM only when asked for and it answers within a few seconds; TCG otherwise.
fn effective_accel(requested: &str) -> String {
    if requested != "kvm" {
        return "tcg".into();
    }
    let probe = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "q35", "-nodefaults", "-display", "none", "-S"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = probe else { return "tcg".into() };
    std::thread::sleep(Duration::from_secs(3));
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    if alive {
        "kvm".into()
    } else {
        eprintln!("  KVM was asked for but does not start here; using TCG");
        "tcg".into()
    }
}

impl Vm<'_> {
    pub fn serial(&self) -> String {
        self.machine.serial_log(self.boot_no)
    }

    /// Error context: the reason plus the serial log's tail.
    pub fn fail<T>(&self, why: &str) -> Result<T> {
        bail!("{why}\n--- last lines of the serial log (boot {}) ---\n{}", self.boot_no, logscan::tail(&self.serial(), 40))
    }

    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the guest agent answers and systemd has finished booting;
    /// returns the time from power-on.
    pub fn wait_booted(&mut self) -> Result<Duration> {
        let (took, state) = self.wait_settled()?;
        if state != "running" {
            let mut a = self.agent()?;
            let failed = a.sh("systemctl --failed --no-legend --plain", Duration::from_secs(30))?;
            // Each failed unit's own log says why.
            let mut why = String::new();
            for unit in failed.stdout.lines().filter_map(|l| l.split_whitespace().next()) {
                let log = a.sh(&format!("journalctl -b -u {unit} -n 15 --no-pager -o cat"), Duration::from_secs(30))?;
                why.push_str(&format!("journal of {unit}:\n    {}\n", log.stdout.trim().replace('\n', "\n    ")));
            }
            return self.fail(&format!("system state is {state:?}; failed units:\n{}{why}", failed.stdout));
        }
        Ok(took)
    }

    /// Waits until the guest agent answers and systemd has finished starting
    /// units, whatever their outcome; returns the time from power-on and
    /// `systemctl is-system-running` (running, degraded, ...).
    pub fn wait_settled(&mut self) -> Result<(Duration, String)> {
        let sock = self.machine.path("qga.sock");
        loop {
            if self.started.elapsed() > BOOT_TIMEOUT {
                return self.fail(&format!("no answer from the guest agent within {BOOT_TIMEOUT:?}"));
            }
            if let Some(status) = self.exit_status() {
                return self.fail(&format!(
                    "QEMU exited ({status}) after {:?}, before the guest finished booting: the guest powered off or rebooted (-no-reboot)",
                    self.started.elapsed()
                ));
            }
            if let Some(why) = logscan::fatal(&self.serial()) {
                return self.fail(&format!("the boot cannot succeed after {:?}: {why}", self.started.elapsed()));
            }
            if sock.exists() {
                if let Ok(mut a) = Agent::connect(&sock, Duration::from_secs(5)) {
                    let r = a.sh("systemctl is-system-running --wait", Duration::from_secs(300))?;
                    return Ok((self.started.elapsed(), r.stdout.trim().to_string()));
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    pub fn agent(&self) -> Result<Agent> {
        Agent::connect(&self.machine.path("qga.sock"), Duration::from_secs(30))
    }

    /// Runs a shell command in the guest; fails unless it exits 0.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.sh_any(script)?;
        if out.code != 0 {
            bail!("`{script}` failed in the guest with code {}: {}{}", out.code, out.stdout, out.stderr);
        }
        Ok(out.stdout)
    }

    /// Runs a shell command in the guest, whatever its exit code.
    pub fn sh_any(&self, script: &str) -> Result<ExecOutput> {
        self.sh_for(script, Duration::from_secs(300))
    }

    /// As [`Vm::sh_any`], for long work (an install under TCG).
    pub fn sh_for(&self, script: &str, timeout: Duration) -> Result<ExecOutput> {
        self.agent()?.sh(script, timeout)
    }

    /// Kernel and journal trouble since boot, or an error listing it.
    pub fn check_logs(&self) -> Result<()> {
        let journal = self.sh("journalctl -b -o short-monotonic --no-pager")?;
        let failed = self.sh("systemctl --failed --no-legend --plain")?;
        let mut found: Vec<String> = logscan::trouble(&self.serial());
        found.extend(logscan::trouble(&journal));
        if !failed.trim().is_empty() {
            found.push(format!("failed units: {}", failed.trim()));
        }
        if !found.is_empty() {
            // Each failed unit's own log says why; fetch it now, while the VM runs.
            let mut units: Vec<&str> = journal
                .lines()
                .filter_map(|l| l.split("Failed to start ").nth(1)?.split_whitespace().next())
                .filter(|u| u.contains('.'))
                .collect();
            units.extend(failed.lines().filter_map(|l| l.split_whitespace().next()));
            units.sort();
            units.dedup();
            for u in units {
                let log = self.sh(&format!("journalctl -b -u {u} -n 15 --no-pager -o cat || true"))?;
                found.push(format!("journal of {u}:\n    {}", log.trim().replace('\n', "\n    ")));
            }
            bail!("trouble in the logs of boot {}:\n  {}", self.boot_no, found.join("\n  "));
        }
        Ok(())
    }

    /// Clean power-off from inside; waits for QEMU to exit.
    pub fn poweroff(mut self) -> Result<()> {
        let _ = self.agent().and_then(|mut a| {
            a.sh("sync; systemctl --no-block poweroff", Duration::from_secs(30)).map(|_| ())
        });
        self.wait_exit(Duration::from_secs(300))
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.exited() {
                return Ok(());
            }
            // A panicked kernel resets only after panic=N seconds, and never powers off.
            if let Some(why) = logscan::fatal(&self.serial()).filter(|w| w.starts_with("kernel panic")) {
                return self.fail(&format!("waiting for QEMU to exit: {why}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.fail(&format!("QEMU did not exit within {timeout:?}"))
    }
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // swtpm (a Daemon guard) stops after QEMU, when the fields drop.
    }
}

/// Starts swtpm for one boot; returns it and its control socket once it listens.
fn start_swtpm(state: &Path, ctrl: &Path) -> Result<(Daemon, PathBuf)> {
    std::fs::create_dir_all(state)?;
    let _ = std::fs::remove_file(ctrl);
    let mut swtpm = Cmd::new("swtpm")
        .args(["socket", "--tpm2", "--terminate"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", ctrl.display()))
        .spawn_daemon()?;
    swtpm.wait_for_path(ctrl, Duration::from_secs(10))?;
    Ok((swtpm, ctrl.to_path_buf()))
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A sparse copy of an image, for tampering without touching the original.
pub fn copy_image(src: &Path, dest: &Path) -> Result<()> {
    Cmd::new("cp").arg("--sparse=always").arg(src).arg(dest).run()?;
    Ok(())
}

/// Flips one bit at `offset` of a file.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0x01;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The suite's image is built signed (`cargo xtask test`), so its ESP
    /// carries a key set; a disk whose GPT names no ESP is an error.
    #[test]
    fn the_signed_test_image_carries_its_keys() {
        let raw = crate::image_dir().join("bpi-os.raw");
        assert!(super::carries_secure_boot_keys(&raw).unwrap(), "{} carries no key set", raw.display());
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.raw");
        std::fs::write(&blank, vec![0u8; 64 << 10]).unwrap();
        assert!(super::carries_secure_boot_keys(&blank).is_err());
    }
}
