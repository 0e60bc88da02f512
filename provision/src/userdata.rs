//! `#cloud-config` user-data (and vendor-data) as Proxmox's qemu-server
//! writes it, plus `write_files` under /bpi/config. Supported keys are
//! checked strictly; keys that mean nothing on an immutable OS are reported
//! and ignored; unknown keys are reported.

use base64::Engine;

use crate::finding::Findings;
use crate::settings::{self, ConfigFile, User, DEFAULT_GROUPS, DEFAULT_USER};
use crate::yaml::Node;

/// Keys Proxmox (or cloud-init habit) writes that an image-based OS cannot
/// honour: packages come with the image, updates through `bpi-os update`.
const IGNORED: &[(&str, &str)] = &[
    ("package_upgrade", "packages come with the image; update the image instead"),
    ("package_update", "packages come with the image; update the image instead"),
    ("package_reboot_if_required", "packages come with the image"),
    ("apt", "there is no package manager on the node"),
];

/// What user-data asks for, before the default user is resolved.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UserData {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub manage_etc_hosts: Option<bool>,
    pub users: Vec<User>,
    pub files: Vec<ConfigFile>,
    pub update: Option<settings::Update>,
}

/// Reads a user-data document; `file` names it in findings.
pub fn parse(text: &str, file: &str, f: &mut Findings) -> UserData {
    let mut out = UserData::default();
    let first = text.lines().next().unwrap_or("").trim_end();
    if !text.trim().is_empty() && first != "#cloud-config" {
        let what = if first.starts_with("#!") { "a script" } else { "not #cloud-config" };
        f.error(file, 1, format!("user-data is {what}: only `#cloud-config` documents are read (scripts do not run on bpi-os)"));
        return out;
    }
    let root = match crate::yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            f.error(file, e.line, format!("malformed YAML: {}", e.message));
            return out;
        }
    };
    let Some(map) = root.map() else {
        f.error(file, root.line, format!("user-data must be a mapping, not {}", root.kind()));
        return out;
    };

    // The default user: `user:` names it (a string, or a mapping like a `users` entry).
    let mut default = User {
        name: DEFAULT_USER.into(),
        password_hash: None,
        expire: true,
        ssh_keys: Vec::new(),
        groups: DEFAULT_GROUPS.iter().map(|s| s.to_string()).collect(),
        sudo_nopasswd: true,
    };
    let mut want_default = true;
    let mut others = Vec::new();
    let mut expire: Option<bool> = None;
    let mut chpasswd: Vec<(String, String, usize)> = Vec::new();

    for (key, v) in map {
        match key.as_str() {
            "hostname" => out.hostname = string(v, file, key, f).filter(|h| check(settings::check_label(h), v, file, f)),
            "fqdn" => out.fqdn = string(v, file, key, f).filter(|h| check(settings::check_fqdn(h), v, file, f)),
            "manage_etc_hosts" => {
                out.manage_etc_hosts = match (v.boolean(), v.text()) {
                    (Some(b), _) => Some(b),
                    (None, Some("localhost")) => Some(true),
                    _ => {
                        f.error(file, v.line, "manage_etc_hosts must be true, false or \"localhost\"");
                        None
                    }
                }
            }
            "preserve_hostname" => {
                if v.boolean() == Some(true) {
                    f.note(file, v.line, "preserve_hostname: true: the hostname given here is still applied once per instance-id");
                }
            }
            "user" => match &v.value {
                crate::yaml::Value::Map(_) => {
                    if let Some(u) = user_entry(v, file, f) {
                        default.name = u.name;
                        default.password_hash = u.password_hash.or(default.password_hash);
                        default.ssh_keys.extend(u.ssh_keys);
                    }
                }
                _ => {
                    if let Some(n) = string(v, file, key, f).filter(|n| check(settings::check_user_name(n), v, file, f)) {
                        default.name = n;
                    }
                }
            },
            "password" => {
                if let Some(p) = string(v, file, key, f).filter(|p| check(settings::check_password_hash(p).map_err(|e| format!("password {e}")), v, file, f)) {
                    default.password_hash = Some(p);
                }
            }
            "ssh_authorized_keys" => default.ssh_keys.extend(keys(v, file, f)),
            "disable_root" => {
                if v.boolean().is_none() {
                    f.error(file, v.line, "disable_root must be true or false");
                }
            }
            "chpasswd" => {
                let Some(m) = v.map() else {
                    f.error(file, v.line, format!("chpasswd must be a mapping, not {}", v.kind()));
                    continue;
                };
                for (k, cv) in m {
                    match k.as_str() {
                        "expire" => match cv.boolean() {
                            Some(b) => expire = Some(b),
                            None => f.error(file, cv.line, "chpasswd.expire must be true or false"),
                        },
                        "users" => {
                            for u in cv.seq().unwrap_or_default() {
                                let name = u.get("name").and_then(Node::text);
                                let pw = u.get("password").and_then(Node::text);
                                let ty = u.get("type").and_then(Node::text).unwrap_or("hash");
                                match (name, pw) {
                                    (Some(n), Some(p)) if ty == "hash" => chpasswd.push((n.into(), p.into(), u.line)),
                                    (Some(_), Some(_)) => f.error(file, u.line, format!("chpasswd.users: type {ty:?} is refused: give a crypt hash with type: hash")),
                                    _ => f.error(file, u.line, "chpasswd.users entries need name and password"),
                                }
                            }
                            if cv.seq().is_none() {
                                f.error(file, cv.line, "chpasswd.users must be a list");
                            }
                        }
                        "list" => {
                            let lines: Vec<(String, usize)> = match (&cv.value, cv.text()) {
                                (_, Some(t)) => t.lines().filter(|l| !l.trim().is_empty()).enumerate().map(|(i, l)| (l.to_string(), cv.line + 1 + i)).collect(),
                                (crate::yaml::Value::Seq(items), _) => items.iter().filter_map(|i| Some((i.text()?.to_string(), i.line))).collect(),
                                _ => {
                                    f.error(file, cv.line, "chpasswd.list must be text or a list of name:hash");
                                    Vec::new()
                                }
                            };
                            for (l, line) in lines {
                                match l.trim().split_once(':') {
                                    Some((n, p)) => chpasswd.push((n.into(), p.into(), line)),
                                    None => f.error(file, line, "chpasswd.list entries are name:hash"),
                                }
                            }
                        }
                        other => f.note(file, cv.line, format!("chpasswd.{other} is not supported and was ignored")),
                    }
                }
            }
            "users" => {
                let Some(items) = v.seq() else {
                    f.error(file, v.line, format!("users must be a list, not {}", v.kind()));
                    continue;
                };
                want_default = false;
                for item in items {
                    if item.text() == Some("default") {
                        want_default = true;
                    } else if let Some(u) = user_entry(item, file, f) {
                        others.push(u);
                    }
                }
            }
            "write_files" => out.files = write_files(v, file, f),
            "bpi_update" => out.update = update(v, file, f),
            _ => match IGNORED.iter().find(|(k, _)| k == key) {
                Some((_, why)) => f.note(file, v.line, format!("{key} ignored: {why}")),
                None => f.note(file, v.line, format!("{key} is not a key bpi-os reads; ignored")),
            },
        }
    }

    if default.name == "root" {
        // `user: root` (Proxmox adds disable_root: False): the keys are root's.
        default.groups.clear();
        default.sudo_nopasswd = false;
    }
    if let Some(e) = expire {
        default.expire = e;
    }
    let mut users = Vec::new();
    if want_default {
        users.push(default);
    }
    users.extend(others);
    for (name, hash, line) in chpasswd {
        if let Err(e) = settings::check_password_hash(&hash) {
            f.error(file, line, format!("chpasswd for {name}: password {e}"));
            continue;
        }
        match users.iter_mut().find(|u| u.name == name) {
            Some(u) => {
                u.password_hash = Some(hash);
                u.expire = expire.unwrap_or(true);
            }
            None if name == "root" => users.push(User {
                name,
                password_hash: Some(hash),
                expire: expire.unwrap_or(true),
                ssh_keys: Vec::new(),
                groups: Vec::new(),
                sudo_nopasswd: false,
            }),
            None => f.error(file, line, format!("chpasswd names {name:?}, a user this user-data does not make")),
        }
    }
    // A user with neither password nor key is made, but nobody can log in as it.
    out.users = users;
    out
}

/// `bpi_update: {source: URL|DIR, automatic: true|false}`; automatic is
/// true when left out (naming a source is asking for updates from it).
fn update(v: &Node, file: &str, f: &mut Findings) -> Option<settings::Update> {
    let Some(m) = v.map() else {
        f.error(file, v.line, format!("bpi_update must be a mapping with source (and automatic), not {}", v.kind()));
        return None;
    };
    let (mut source, mut automatic, mut ok) = (None, true, true);
    for (k, kv) in m {
        match k.as_str() {
            "source" => match string(kv, file, "bpi_update.source", f) {
                Some(s) => match bpi_formats::update::check_source(&s) {
                    Ok(()) => source = Some(s),
                    Err(e) => {
                        f.error(file, kv.line, format!("bpi_update.source: {e}"));
                        ok = false;
                    }
                },
                None => ok = false,
            },
            "automatic" => match kv.boolean() {
                Some(b) => automatic = b,
                None => {
                    f.error(file, kv.line, "bpi_update.automatic must be true or false");
                    ok = false;
                }
            },
            other => {
                f.error(file, kv.line, format!("bpi_update.{other} is not a key of bpi_update (source, automatic)"));
                ok = false;
            }
        }
    }
    match (source, ok) {
        (Some(source), true) => Some(settings::Update { source, automatic }),
        (None, true) => {
            f.error(file, v.line, "bpi_update needs source: an https:// URL or a directory holding the signed bundle");
            None
        }
        _ => None,
    }
}

fn check(r: Result<(), String>, v: &Node, file: &str, f: &mut Findings) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            f.error(file, v.line, e);
            false
        }
    }
}

fn string(v: &Node, file: &str, key: &str, f: &mut Findings) -> Option<String> {
    match v.text() {
        Some(t) => Some(t.to_string()),
        None => {
            f.error(file, v.line, format!("{key} must be a string, not {}", v.kind()));
            None
        }
    }
}

fn keys(v: &Node, file: &str, f: &mut Findings) -> Vec<String> {
    let items: Vec<&Node> = match (v.seq(), v.text()) {
        (Some(s), _) => s.iter().collect(),
        (None, Some(_)) => vec![v],
        _ => {
            f.error(file, v.line, format!("ssh_authorized_keys must be a list, not {}", v.kind()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for k in items {
        match k.text() {
            Some(t) => match settings::check_ssh_key(t) {
                Ok(_) => out.push(t.trim().to_string()),
                Err(e) => f.error(file, k.line, format!("ssh_authorized_keys: {e}")),
            },
            None => f.error(file, k.line, "ssh_authorized_keys entries must be strings"),
        }
    }
    out
}

fn user_entry(v: &Node, file: &str, f: &mut Findings) -> Option<User> {
    let Some(m) = v.map() else {
        f.error(file, v.line, format!("a users entry must be \"default\" or a mapping, not {}", v.kind()));
        return None;
    };
    let mut u = User { name: String::new(), password_hash: None, expire: false, ssh_keys: Vec::new(), groups: Vec::new(), sudo_nopasswd: false };
    let mut ok = true;
    for (k, x) in m {
        match k.as_str() {
            "name" => match x.text() {
                Some(n) if settings::check_user_name(n).is_ok() => u.name = n.into(),
                _ => {
                    ok = false;
                    f.error(file, x.line, settings::check_user_name(x.text().unwrap_or("")).err().unwrap_or_default());
                }
            },
            "hashed_passwd" | "passwd" => match x.text().map(settings::check_password_hash) {
                Some(Ok(())) => u.password_hash = x.text().map(String::from),
                _ => {
                    ok = false;
                    f.error(file, x.line, format!("{k}: {}", settings::check_password_hash("").unwrap_err()));
                }
            },
            "plain_text_passwd" => {
                ok = false;
                f.error(file, x.line, "plain_text_passwd is refused: give hashed_passwd");
            }
            "ssh_authorized_keys" => u.ssh_keys.extend(keys(x, file, f)),
            "groups" => {
                let names: Vec<String> = match (x.seq(), x.text()) {
                    (Some(s), _) => s.iter().filter_map(|g| g.text().map(String::from)).collect(),
                    (None, Some(t)) => t.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
                    _ => Vec::new(),
                };
                for g in &names {
                    if settings::check_user_name(g).is_err() {
                        ok = false;
                        f.error(file, x.line, format!("groups: {g:?} is not a group name"));
                    }
                }
                u.groups = names;
            }
            "sudo" => match (x.boolean(), x.text()) {
                (Some(false), _) => u.sudo_nopasswd = false,
                (_, Some(t)) if t.contains("NOPASSWD:ALL") => u.sudo_nopasswd = true,
                _ => f.note(file, x.line, "sudo: only \"ALL=(ALL) NOPASSWD:ALL\" or false are understood; ignored"),
            },
            "lock_passwd" | "shell" | "gecos" | "primary_group" | "homedir" => {
                f.note(file, x.line, format!("users.{k} is not supported and was ignored"))
            }
            other => f.note(file, x.line, format!("users.{other} is not a key bpi-os reads; ignored")),
        }
    }
    if u.name.is_empty() && ok {
        f.error(file, v.line, "a users entry needs a name");
        return None;
    }
    ok.then_some(u)
}

/// Only files under /bpi/config may be written; those bpi-os reads are
/// checked by the loader bpi-os itself uses for them.
fn write_files(v: &Node, file: &str, f: &mut Findings) -> Vec<ConfigFile> {
    let Some(items) = v.seq() else {
        f.error(file, v.line, format!("write_files must be a list, not {}", v.kind()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let Some(m) = item.map() else {
            f.error(file, item.line, "write_files entries must be mappings");
            continue;
        };
        let mut path = None;
        let mut content: Option<(String, usize, bool)> = None;
        let mut encoding = "text".to_string();
        let mut mode = 0o644;
        for (k, x) in m {
            match k.as_str() {
                "path" => path = x.text().map(|p| (p.to_string(), x.line)),
                "content" => content = Some((x.text().unwrap_or("").to_string(), x.line, x.is_literal())),
                "encoding" => encoding = x.text().unwrap_or("").to_ascii_lowercase(),
                "permissions" => match x.text().and_then(|p| u32::from_str_radix(p.trim_start_matches("0o"), 8).ok()).filter(|m| *m <= 0o777) {
                    Some(m) => mode = m,
                    None => f.error(file, x.line, "permissions must be an octal mode such as '0644'"),
                },
                "owner" => {
                    if x.text() != Some("root:root") && x.text() != Some("root") {
                        f.error(file, x.line, "owner: files under /bpi/config belong to root");
                    }
                }
                "append" if x.boolean() == Some(false) => {}
                "defer" => f.note(file, x.line, "write_files.defer ignored: files are written before the services that read them start"),
                other => f.error(file, x.line, format!("write_files.{other} is not supported")),
            }
        }
        let Some((p, pline)) = path else {
            f.error(file, item.line, "a write_files entry needs a path");
            continue;
        };
        let normal = std::path::Path::new(&p).components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        if !p.starts_with("/bpi/config/") || !normal || p.ends_with('/') {
            f.error(file, pline, format!("write_files: {p:?} is outside /bpi/config (only files there can be written; the rest of the system is the image)"));
            continue;
        }
        let (text, cline, literal) = content.unwrap_or((String::new(), item.line, false));
        let bytes = match encoding.as_str() {
            "text" | "text/plain" => text.into_bytes(),
            "b64" | "base64" => match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
                Ok(b) => b,
                Err(e) => {
                    f.error(file, cline, format!("write_files {p}: content is not base64 ({e})"));
                    continue;
                }
            },
            other => {
                f.error(file, item.line, format!("write_files {p}: encoding {other:?} is not supported (text or b64)"));
                continue;
            }
        };
        if let Err((rel, msg)) = check_config(&p, &bytes) {
            // A literal block's lines follow its first line one for one;
            // other forms give the content's own line (the message keeps the file's line).
            // The parser marks a block at its first line with text, after any empty ones.
            let leading_empty = text_lines_before_content(&bytes);
            let line = rel
                .filter(|r| literal && matches!(encoding.as_str(), "text" | "text/plain") && *r > leading_empty)
                .map_or(cline, |r| cline + r - 1 - leading_empty);
            f.error(file, line, format!("write_files {p}: {msg}"));
            continue;
        }
        out.push(ConfigFile { path: p, content: bytes, mode });
    }
    out
}

fn text_lines_before_content(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_whitespace()).filter(|b| **b == b'\n').count()
}

/// The files bpi-os reads go through their own loader. An error is the
/// line within the file (when the loader names one) and the message.
pub fn check_config(path: &str, bytes: &[u8]) -> Result<(), (Option<usize>, String)> {
    const ORIGIN: &str = "\u{1}";
    let rel = path.trim_start_matches("/bpi/config/");
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err((None, "not UTF-8 text".into()));
    };
    let r = match rel {
        "system/topology.toml" => bpi_drx_control::model::Topology::parse(text, ORIGIN).map(|_| ()),
        "system/drx-data.toml" => bpi_drx_data::config::parse(text, ORIGIN).map(|_| ()),
        p if p.starts_with("policies/") && p.ends_with(".toml") => bpi_drx_control::policy::parse(text, ORIGIN).map(|_| ()),
        _ => Ok(()),
    };
    r.map_err(|e| {
        let msg = format!("{e:#}");
        // The loaders say `ORIGIN:LINE: message`.
        let parsed = msg.strip_prefix(ORIGIN).and_then(|r| r.strip_prefix(':')).and_then(|r| {
            let (n, rest) = r.split_once(':')?;
            Some((n.parse::<usize>().ok()?, rest.trim_start().to_string()))
        });
        match parsed {
            Some((n, rest)) => (Some(n), format!("line {n} of the file: {rest}")),
            None => (None, msg.replace(ORIGIN, path)),
        }
    })
}
