//! Planning one apt transaction that installs the host tools without removing
//! anything: read apt-get's simulation, and where it would remove an installed
//! package (a newer build than the configured sources carry, such as
//! qemu-utils from backports next to bookworm's qemu-system-x86), pin that
//! package to the version the rest of the transaction installs.

use anyhow::{bail, Result};

/// One line of `apt-get install -s` output that changes the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: Kind,
    pub package: String,
    /// The installed version it replaces or removes.
    pub old: Option<String>,
    /// The version it installs.
    pub new: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Install,
    Remove,
}

/// The actions of an `apt-get -s install` run (`Inst` and `Remv`/`Purg` lines).
pub fn parse_simulation(text: &str) -> Vec<Action> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let kind = match words.next()? {
                "Inst" => Kind::Install,
                "Remv" | "Purg" => Kind::Remove,
                _ => return None,
            };
            let package = words.next()?.to_string();
            let rest = line.split_once(package.as_str())?.1.trim_start();
            // "[installed]" only right after the name; "[amd64]" and "[]" come later.
            let old = rest.starts_with('[').then(|| between(rest, '[', ']')).flatten().filter(|v| !v.is_empty());
            let new = between(rest, '(', ')').and_then(|v| v.split_whitespace().next().map(str::to_string));
            Some(Action { kind, package, old, new })
        })
        .collect()
}

fn between(s: &str, open: char, close: char) -> Option<String> {
    let start = s.find(open)? + 1;
    let len = s[start..].find(close)?;
    Some(s[start..start + len].trim().to_string())
}

/// The versions `apt-cache madison PACKAGE` lists as available.
pub fn parse_madison(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split('|').nth(1)).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

/// A package pinned to a version so that apt keeps it instead of removing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub package: String,
    pub installed: String,
    pub version: String,
    /// The package of the transaction that installs the same version.
    pub matches: String,
}

impl Pin {
    pub fn arg(&self) -> String {
        format!("{}={}", self.package, self.version)
    }
}

/// For every package the simulation removes, the pin that keeps it: the
/// version the transaction installs for another package of the same build
/// (packages of one source version are meant to be installed together).
/// `available` lists a package's versions in the configured sources.
pub fn pins_for_removals(actions: &[Action], available: impl Fn(&str) -> Result<Vec<String>>) -> Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for removed in actions.iter().filter(|a| a.kind == Kind::Remove) {
        let versions = available(&removed.package)?;
        let partner = actions.iter().filter(|a| a.kind == Kind::Install && a.package != removed.package).find_map(|a| {
            let v = a.new.as_ref()?;
            versions.contains(v).then(|| (a.package.clone(), v.clone()))
        });
        let Some((matches, version)) = partner else {
            bail!(
                "apt would remove {} {} to install the host tools, and the configured apt sources have no version of it \
                 that matches the rest of the transaction. Install a consistent set by hand (for example `apt-get install \
                 {} qemu-system-x86` from one suite), then run this again",
                removed.package,
                removed.old.as_deref().unwrap_or("(installed)"),
                removed.package
            );
        };
        pins.push(Pin {
            package: removed.package.clone(),
            installed: removed.old.clone().unwrap_or_default(),
            version,
            matches,
        });
    }
    Ok(pins)
}

/// The packages a simulation removes, as a readable list (empty: none).
pub fn removals(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter(|a| a.kind == Kind::Remove)
        .map(|a| format!("{} {}", a.package, a.old.as_deref().unwrap_or("")).trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What bookworm's apt printed for `apt-get install -s qemu-system-x86`
    /// with qemu-utils from bookworm-backports installed (trimmed).
    const SIM: &str = "NOTE: This is only a simulation!\n\
Reading package lists...\n\
The following packages will be REMOVED:\n  qemu-utils\n\
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
Inst libaio1 (0.3.113-4 Debian:12.12/stable [amd64])\n\
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64]) []\n\
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])\n\
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])\n";

    const MADISON: &str = "qemu-utils | 1:10.0.2+ds-2+deb13u1~bpo12+1 | now\n\
qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
qemu-utils | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n";

    #[test]
    fn reads_installs_and_removals() {
        let a = parse_simulation(SIM);
        assert_eq!(a.len(), 4, "{a:?}");
        assert_eq!(
            a[0],
            Action { kind: Kind::Remove, package: "qemu-utils".into(), old: Some("1:10.0.2+ds-2+deb13u1~bpo12+1".into()), new: None }
        );
        assert_eq!(a[2].new.as_deref(), Some("1:7.2+dfsg-7+deb12u18+b3"));
        assert_eq!(a[2].old, None, "the empty [] after the version is not an installed version");
        assert_eq!(removals(&a), vec!["qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"]);
        let down = parse_simulation("Inst qemu-utils [1:10.0.2] (1:7.2 Debian:12.12/stable [amd64])\n");
        assert_eq!(down[0].old.as_deref(), Some("1:10.0.2"));
        assert_eq!(down[0].new.as_deref(), Some("1:7.2"));
    }

    #[test]
    fn a_removal_is_pinned_to_its_partners_version() {
        let a = parse_simulation(SIM);
        let pins = pins_for_removals(&a, |p| {
            assert_eq!(p, "qemu-utils");
            Ok(parse_madison(MADISON))
        })
        .unwrap();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].arg(), "qemu-utils=1:7.2+dfsg-7+deb12u18+b3");
        assert_eq!(pins[0].matches, "qemu-system-common");
        assert_eq!(pins[0].installed, "1:10.0.2+ds-2+deb13u1~bpo12+1");
    }

    #[test]
    fn a_removal_with_no_matching_version_is_refused_with_the_fix() {
        let a = parse_simulation(SIM);
        let err = pins_for_removals(&a, |_| Ok(vec!["1:10.0.2+ds-2+deb13u1~bpo12+1".into()])).unwrap_err().to_string();
        assert!(err.contains("apt would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"), "{err}");
        assert!(err.contains("apt-get install qemu-utils"), "{err}");
        assert!(pins_for_removals(&parse_simulation("Inst a (1 x)\n"), |_| unreachable!()).unwrap().is_empty());
    }
}
