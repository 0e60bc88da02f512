//! What every bpi-os D-Bus service shares: who the caller is and whether
//! they may change things (root, or a named admin group, checked in the
//! service as well as by the bus policy), and serving until SIGTERM.

use anyhow::Context;
use zbus::{fdo, message::Header, Connection};

/// Who is calling: user id, user name, process id, and whether they are an admin.
pub struct Caller {
    pub uid: u32,
    pub user: String,
    pub pid: u32,
    pub admin: bool,
}

/// The admins of one service: root, and the members of a group if named.
#[derive(Clone, Copy, Debug, Default)]
pub struct Admins {
    gid: Option<u32>,
}

impl Admins {
    pub fn from_group(group: Option<&str>) -> anyhow::Result<Admins> {
        let gid = match group {
            None => None,
            Some(g) => Some(
                nix::unistd::Group::from_name(g).ok().flatten().with_context(|| format!("admin group {g:?} does not exist"))?.gid.as_raw(),
            ),
        };
        Ok(Admins { gid })
    }

    pub async fn caller(&self, header: &Header<'_>, conn: &Connection) -> fdo::Result<Caller> {
        let sender = header.sender().ok_or_else(|| fdo::Error::AccessDenied("the call has no sender".into()))?;
        let dbus = fdo::DBusProxy::new(conn).await?;
        let creds = dbus.get_connection_credentials(sender.clone().into()).await?;
        let uid = creds.unix_user_id().ok_or_else(|| fdo::Error::AccessDenied("the bus gave no caller uid".into()))?;
        let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
        let admin = uid == 0
            || self.gid.is_some_and(|gid| {
                let in_creds = creds.unix_group_ids().is_some_and(|g| g.contains(&gid));
                let primary = user.as_ref().is_some_and(|u| u.gid.as_raw() == gid);
                in_creds || primary
            });
        Ok(Caller { uid, user: user.map(|u| u.name).unwrap_or_else(|| uid.to_string()), pid: creds.process_id().unwrap_or(0), admin })
    }

    /// The caller, if they may do `what`; AccessDenied naming who may otherwise.
    pub async fn require(&self, header: &Header<'_>, conn: &Connection, what: &str) -> fdo::Result<Caller> {
        let caller = self.caller(header, conn).await?;
        if !caller.admin {
            return Err(fdo::Error::AccessDenied(format!(
                "{what} is allowed to root{} only; uid {} ({}) may only query",
                if self.gid.is_some() { " and the admin group" } else { "" },
                caller.uid,
                caller.user
            )));
        }
        Ok(caller)
    }
}

/// A connection to the bus at `address`, or the system bus: how every
/// client of a bpi-os service reaches it (tests pass a private bus's address).
pub fn connect(address: Option<&str>) -> zbus::Result<zbus::blocking::Connection> {
    match address {
        Some(a) => zbus::blocking::connection::Builder::address(a)?.build(),
        None => zbus::blocking::Connection::system(),
    }
}

/// Blocks SIGTERM and SIGINT in this thread. Call it before any thread
/// starts, so every thread inherits the mask and only [`serve_until_signal`]
/// takes the signal.
pub fn block_stop_signals() -> anyhow::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;
    Ok(signals)
}

/// Serves `iface` at `path` under `name` on the system bus (or `bus`), tells
/// systemd READY=1 with `status`, and returns when one of `signals` arrives
/// (the connection closed). Meanwhile a watcher calls the service through the
/// bus (Peer.Ping to its own name) every third of systemd's WatchdogSec (10 s
/// without one), feeds the watchdog when the call comes back, and when it
/// fails, ends the service with an error: a service that lost the bus cannot
/// be reached and must exit for systemd to restart it.
pub fn serve_until_signal<I: zbus::object_server::Interface>(
    signals: nix::sys::signal::SigSet,
    bus: Option<&str>,
    name: &str,
    path: &str,
    iface: I,
    status: &str,
) -> anyhow::Result<nix::sys::signal::Signal> {
    let builder = match bus {
        Some(a) => zbus::blocking::connection::Builder::address(a)?,
        None => zbus::blocking::connection::Builder::system()?,
    };
    let conn = builder.name(name)?.serve_at(path, iface)?.build().with_context(|| format!("taking {name} on the bus"))?;
    crate::notify::notify(&format!("READY=1\nSTATUS={status}")).context("notifying systemd")?;
    let lost = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let (conn, name, path, lost) = (conn.clone(), name.to_owned(), path.to_owned(), lost.clone());
        let (interval, watchdog) = watch_interval();
        std::thread::spawn(move || loop {
            std::thread::sleep(interval);
            let ping = zbus::blocking::fdo::PeerProxy::builder(&conn)
                .destination(name.as_str())
                .and_then(|b| b.path(path.as_str()))
                .and_then(|b| b.build())
                .and_then(|p| p.ping());
            match ping {
                Ok(()) if watchdog => {
                    let _ = crate::notify::notify("WATCHDOG=1");
                }
                Ok(()) => {}
                Err(e) => {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
                    return;
                }
            }
        });
    }
    let sig = signals.wait().context("waiting for a signal")?;
    let _ = crate::notify::notify("STOPPING=1");
    drop(conn);
    if let Some(why) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!("lost the bus: a call to {name} through it failed ({why}); exiting so that systemd restarts the service");
    }
    Ok(sig)
}

/// How often the watcher checks the bus, and whether systemd's watchdog is
/// on for this process (WATCHDOG_USEC, and WATCHDOG_PID unset or ours).
fn watch_interval() -> (std::time::Duration, bool) {
    let ours = std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string());
    match std::env::var("WATCHDOG_USEC").ok().and_then(|u| u.parse::<u64>().ok()) {
        Some(us) if ours && us > 0 => (std::time::Duration::from_micros(us / 3), true),
        _ => (std::time::Duration::from_secs(10), false),
    }
}
