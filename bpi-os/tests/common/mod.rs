//! Shared by the D-Bus tests: a private dbus-daemon configured like Debian's
//! system bus, a world-readable scratch directory with the binary, services
//! started the way systemd would (waiting for READY=1), and running the CLI
//! as root or as another user.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const NOBODY: u32 = 65534;

pub fn can_run() -> bool {
    bpi_support::skip::needs_root("calling the bus as another user")
        && bpi_support::skip::needs_program("dbus-daemon", "dbus-daemon")
        && bpi_support::skip::needs_program("dbus-send", "dbus-bin")
}

/// A world-readable scratch directory with a copy of the binary, so `nobody`
/// can reach the bus socket and run the CLI wherever the checkout lives.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

pub fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bpi-os");
    // A hard link, not a copy: a copy is open for writing for a moment, and a
    // process another test thread forks then holds that descriptor until it
    // execs, so running the copy fails with ETXTBSY ("Text file busy").
    if std::fs::hard_link(env!("CARGO_BIN_EXE_bpi-os"), &bin).is_err() {
        copy_then_wait_for_forks(&bin);
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    Scratch { dir, bin }
}

/// Across file systems: copy, then run the copy until no forked child still
/// holds it open for writing.
fn copy_then_wait_for_forks(bin: &Path) {
    std::fs::copy(env!("CARGO_BIN_EXE_bpi-os"), bin).unwrap();
    for _ in 0..100 {
        match Command::new(bin).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

pub struct Bus {
    child: Child,
    pub address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bus configured like Debian's system bus (deny by default, policies from
/// `include`), or one that lets everyone send anything (`include` None).
/// A private bus configured like Debian's system bus with the given policy
/// files; with none, a bus that allows everything (to test the services' own checks).
pub fn start_bus(s: &Scratch, includes: &[&Path]) -> Bus {
    let sock = s.dir.path().join("bus.sock");
    let _ = std::fs::remove_file(&sock);
    let policy = match includes {
        [_, ..] => format!(
            r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  {}"#,
            includes.iter().map(|f| format!("<include>{}</include>", f.display())).collect::<Vec<_>>().join("\n  ")
        ),
        [] => r#"<policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>"#
            .to_string(),
    };
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  {policy}
</busconfig>
"#,
        sock.display()
    );
    let conf = s.dir.path().join("bus.conf");
    std::fs::write(&conf, config).unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("unix:"), "dbus-daemon printed {line:?}");
    Bus { child, address: line.trim().to_string() }
}

pub struct Service {
    child: Child,
    notify: UnixDatagram,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next sd_notify message (10 s at most).
    pub fn notified(&self) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits (`limit` at most) for the service to exit by itself.
    pub fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the service and waits for its sd_notify READY=1, as systemd would.
/// Starts `bpi-os ARGS` and waits for its sd_notify READY=1, as systemd would.
pub fn serve(s: &Scratch, args: &[&str]) -> Service {
    serve_env(s, args, &[])
}

/// [`serve`] with more environment (systemd's WATCHDOG_USEC, say).
pub fn serve_env(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Service {
    let mut cmd = Command::new(&s.bin);
    cmd.args(args).envs(env.iter().copied());
    serve_command(s, cmd)
}

/// `bpi-os ARGS` in a network namespace, as [`serve`].
pub fn serve_in(s: &Scratch, netns: &str, args: &[&str]) -> Service {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(&s.bin).args(args);
    serve_command(s, cmd)
}

/// Starts `cmd` with a NOTIFY_SOCKET and waits for its READY=1.
pub fn serve_command(s: &Scratch, mut cmd: Command) -> Service {
    let notify_path = s.dir.path().join(format!("notify-{}", rand_suffix()));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let child = cmd.env("NOTIFY_SOCKET", &notify_path).spawn().unwrap();
    let svc = Service { child, notify };
    let msg = svc.notified().expect("the service never said READY=1");
    assert!(msg.contains("READY=1"), "notify said {msg:?}");
    svc.notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    svc
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// `program`, run as `uid` (its own group, no supplementary groups) or as root.
pub fn command(program: &Path, uid: Option<u32>) -> Command {
    match uid {
        None => Command::new(program),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]).arg(program);
            c
        }
    }
}

pub fn cli(s: &Scratch, uid: Option<u32>, args: &[&str]) -> Output {
    command(&s.bin, uid).args(args).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}


/// The bus policy and the running service agree: every member the policy
/// file names is a method the service exports, and each of the service's
/// admin methods is denied to everyone and allowed to bpi-admin by name.
pub fn check_policy_against_service(bus: &Bus, dest: &str, path: &str, policy: &Path, admin_methods: &[&str]) {
    let o = Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply=literal", &format!("--dest={dest}"), path, "org.freedesktop.DBus.Introspectable.Introspect"])
        .output()
        .unwrap();
    assert!(o.status.success(), "introspecting {dest}: {}", text(&o));
    let xml = String::from_utf8_lossy(&o.stdout).to_string();
    let iface = &xml[xml.find(&format!("<interface name=\"{dest}\">")).unwrap_or_else(|| panic!("{dest} does not export its interface: {xml}"))..];
    let iface = &iface[..iface.find("</interface>").unwrap()];
    let methods: Vec<&str> = iface.split("<method name=\"").skip(1).filter_map(|m| m.split('"').next()).collect();
    let conf = std::fs::read_to_string(policy).unwrap();
    for member in conf.split("send_member=\"").skip(1).filter_map(|m| m.split('"').next()) {
        assert!(methods.contains(&member), "{} names {member}, which {dest} does not export (it exports {methods:?})", policy.display());
    }
    let default = &conf[conf.find("<policy context=\"default\">").unwrap()..];
    let admins = &conf[conf.find("<policy group=\"bpi-admin\">").unwrap()..];
    for m in admin_methods {
        assert!(methods.contains(m), "{dest} does not export its admin method {m}: {methods:?}");
        assert!(default[..default.find("</policy>").unwrap()].contains(&format!("<deny send_destination=\"{dest}\" send_interface=\"{dest}\" send_member=\"{m}\"/>")), "the policy does not deny {m}");
        assert!(admins[..admins.find("</policy>").unwrap()].contains(&format!("send_member=\"{m}\"/>")), "the policy does not allow {m} to bpi-admin");
    }
}

/// A u64 property's PropertiesChanged values, as they come, on a channel.
pub fn watch<P: 'static>(changes: impl Iterator<Item = P> + Send + 'static, value: fn(&P) -> u64) -> std::sync::mpsc::Receiver<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for change in changes {
            if tx.send(value(&change)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (10 s at most) until the watched property reaches `want`; fails
/// naming what came instead.
pub fn wait_for(rx: &std::sync::mpsc::Receiver<u64>, what: &str, want: u64) {
    let mut seen = Vec::new();
    while let Ok(v) = rx.recv_timeout(Duration::from_secs(10)) {
        seen.push(v);
        if v >= want {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&want), "no PropertiesChanged for {what} = {want}: {seen:?}");
}
