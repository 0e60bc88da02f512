//! Host integration: `bpi-os ledger serve` on a private dbus-daemon started
//! here, called by the bpi-os CLI, by dbus-send and by a zbus proxy, as root
//! and as `nobody`. Needs root (to call as another user) and dbus-daemon;
//! skipped with the reason printed otherwise.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bpi_ledger::service::Ledger1ProxyBlocking;

const NOBODY: u32 = 65534;
const SEED_EXAMPLE: &str = r#"{"bridge_name": "ovsbr0", "uplink_interface": "enp2s0", "configuration": {"stp": false}}"#;

fn can_run() -> bool {
    if !bpi_support::host::is_root() {
        eprintln!("SKIP: calling the bus as another user needs root");
        return false;
    }
    if bpi_support::cmd::which("dbus-daemon").is_none() || bpi_support::cmd::which("dbus-send").is_none() {
        eprintln!("SKIP: dbus-daemon or dbus-send is not installed (cargo xtask test installs them)");
        return false;
    }
    true
}

/// A world-readable scratch directory with a copy of the binary, so `nobody`
/// can reach the bus socket and run the CLI wherever the checkout lives.
struct Scratch {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bpi-os");
    std::fs::copy(env!("CARGO_BIN_EXE_bpi-os"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    Scratch { dir, bin }
}

struct Bus {
    child: Child,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bus configured like Debian's system bus (deny by default, policies from
/// `include`), or one that lets everyone send anything (`include` None).
fn start_bus(s: &Scratch, include: Option<&Path>) -> Bus {
    let sock = s.dir.path().join("bus.sock");
    let _ = std::fs::remove_file(&sock);
    let policy = match include {
        Some(file) => format!(
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
  <include>{}</include>"#,
            file.display()
        ),
        None => r#"<policy context="default">
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

struct Service {
    child: Child,
}

impl Service {
    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
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
fn serve(s: &Scratch, bus: &Bus, store: &Path, extra: &[&str]) -> Service {
    let notify_path = s.dir.path().join(format!("notify-{}", rand_suffix()));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let child = Command::new(&s.bin)
        .args(["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store"])
        .arg(store)
        .args(extra)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let svc = Service { child };
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("the service never said READY=1");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.contains("READY=1"), "notify said {msg:?}");
    svc
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// `program`, run as `uid` (its own group, no supplementary groups) or as root.
fn command(program: &Path, uid: Option<u32>) -> Command {
    match uid {
        None => Command::new(program),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]).arg(program);
            c
        }
    }
}

fn cli(s: &Scratch, uid: Option<u32>, args: &[&str]) -> Output {
    command(&s.bin, uid).args(args).output().unwrap()
}

fn dbus_send(bus: &Bus, uid: Option<u32>, method: &str, args: &[&str]) -> Output {
    let mut c = command(Path::new("dbus-send"), uid);
    c.arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.bpi.os.Ledger1", "/org/bpi/os/Ledger1"])
        .arg(format!("org.bpi.os.Ledger1.{method}"))
        .args(args);
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn count(bus: &Bus) -> u64 {
    let o = dbus_send(bus, None, "get_stats", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let json = &out[out.find('{').unwrap()..=out.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(&json.replace("\\\"", "\"")).unwrap();
    v["count"].as_u64().unwrap()
}

fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/dbus/org.bpi.os.Ledger1.conf")
}

#[test]
fn with_the_shipped_policy_anyone_queries_and_only_root_appends() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, Some(&policy_file()));
    let store = s.dir.path().join("store");
    let svc = serve(&s, &bus, &store, &[]);

    // The seed's example record (section 9.1.1), by root through the CLI.
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("recorded block 1"), "{}", text(&o));
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "network", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));

    // The seed's verbs, as its dbus-send lines call them.
    let o = dbus_send(&bus, None, "get_blocks_by_category", &["string:bridge"]);
    assert!(o.status.success() && text(&o).contains("ovsbr0"), "{}", text(&o));
    let o = dbus_send(&bus, None, "get_blocks_by_height", &["uint64:1", "uint64:2"]);
    assert!(text(&o).contains(r#"\"height\":2"#) || text(&o).contains(r#""height":2"#), "{}", text(&o));
    let o = dbus_send(&bus, None, "verify_blockchain_integrity", &[]);
    assert!(text(&o).contains(r#""ok":true"#) || text(&o).contains(r#"\"ok\":true"#), "{}", text(&o));

    // nobody may query, but not append: the bus policy says no.
    let o = dbus_send(&bus, Some(NOBODY), "ping", &[]);
    assert!(o.status.success() && text(&o).contains("pong"), "{}", text(&o));
    let o = dbus_send(&bus, Some(NOBODY), "get_stats", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(!o.status.success(), "nobody appended: {}", text(&o));
    assert!(text(&o).contains("AccessDenied"), "{}", text(&o));
    assert_eq!(count(&bus), 2);

    let status = svc.stop();
    assert!(status.success(), "serve exited with {status}");
    // The final checkpoint covers everything, and the copy verifies offline.
    let o = cli(&s, None, &["ledger", "verify", "--json", "--store", store.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checkpoint"]["size"], 2, "{v}");
}

#[test]
fn the_service_refuses_unprivileged_appends_even_on_an_open_bus() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, None);
    let store = s.dir.path().join("store");
    let svc = serve(&s, &bus, &store, &[]);
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(!o.status.success(), "nobody appended: {}", text(&o));
    assert!(text(&o).contains("allowed to root") && text(&o).contains("uid 65534"), "{}", text(&o));
    assert_eq!(count(&bus), 0);
    drop(svc);

    // With an admin group, its members may append, and the block names them.
    let svc = serve(&s, &bus, &store, &["--admin-group", "nogroup"]);
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "user", "--action", "login", "--data", r#"{"username":"nobody"}"#]);
    assert!(o.status.success(), "{}", text(&o));
    let o = dbus_send(&bus, None, "get_blocks_by_height", &["uint64:1", "uint64:1"]);
    assert!(text(&o).contains(r#"\"user\":\"nobody\""#) || text(&o).contains(r#""user":"nobody""#), "{}", text(&o));
    drop(svc);
}

#[test]
fn bad_input_over_dbus_is_refused_and_nothing_is_recorded() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, None);
    let store = s.dir.path().join("store");
    let _svc = serve(&s, &bus, &store, &[]);
    let conn = bpi_ledger::service::connect(Some(&bus.address)).unwrap();
    let proxy = Ledger1ProxyBlocking::new(&conn).unwrap();
    let big = format!(r#"{{"key":"x","value":"{}"}}"#, "a".repeat(70 * 1024));
    let cases = [
        ("bridge", "created", "{not json", "not valid JSON"),
        ("weather", "created", "{}", "unknown category"),
        ("settings", "modified", big.as_str(), "limit is 65536"),
        ("bridge", "created", r#"{"uplink_interface":"eth0"}"#, "missing \"bridge_name\""),
        ("bridge", "Created Twice", SEED_EXAMPLE, "action"),
    ];
    for (cat, action, data, want) in cases {
        let err = proxy.append(cat, action, data).expect_err("bad input was recorded");
        let msg = err.to_string();
        assert!(msg.contains("InvalidArgs") && msg.contains(want), "{cat}/{action}: {msg}");
    }
    let stats = proxy.get_stats().unwrap();
    assert!(stats.contains(r#""count":0"#), "{stats}");
    let (h, _) = proxy.append("bridge", "created", SEED_EXAMPLE).unwrap();
    assert_eq!(h, 1);
}
