//! Plugins decide what may be recorded: each owns some categories, checks the
//! shape of their data and may turn one submission into several records (seed
//! 000, section 2.2.2). Data of an unknown category, or that fails its
//! plugin's check, is refused and nothing is recorded.

use serde_json::Value;

use crate::error::{LedgerError, Result};

pub trait LedgerPlugin: Send + Sync {
    /// Recorded as the block's producer.
    fn name(&self) -> &str;
    fn categories(&self) -> Vec<String>;
    /// The data to record for one submission (one entry per block).
    fn process_data(&self, category: &str, data: Value) -> Result<Vec<Value>> {
        let _ = category;
        Ok(vec![data])
    }
    /// `Err` names the first thing wrong with the data's shape.
    fn validate_data(&self, category: &str, data: &Value) -> Result<(), String>;
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace.
fn ifname(data: &Value, key: &str, required: bool) -> Result<bool, String> {
    match data.get(key) {
        None | Some(Value::Null) if !required => Ok(false),
        None | Some(Value::Null) => Err(format!("missing {key:?}")),
        Some(Value::String(s)) => {
            let ok = (1..=15).contains(&s.len()) && !s.contains(['/', ':']) && !s.chars().any(char::is_whitespace);
            if ok {
                Ok(true)
            } else {
                Err(format!("{key:?} is {s:?}, not an interface name (1-15 bytes, no '/', ':' or spaces)"))
            }
        }
        Some(v) => Err(format!("{key:?} must be a string, not {v}")),
    }
}

fn text(data: &Value, key: &str, required: bool) -> Result<Option<String>, String> {
    match data.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(format!("missing {key:?}")),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(v) => Err(format!("{key:?} must be a non-empty string, not {v}")),
    }
}

/// Bridges, interfaces, connections and ports.
pub struct NetworkPlugin;

impl LedgerPlugin for NetworkPlugin {
    fn name(&self) -> &str {
        "network-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["network", "bridge", "interface", "connection", "port"].map(String::from).to_vec()
    }
    fn validate_data(&self, category: &str, d: &Value) -> Result<(), String> {
        match category {
            "bridge" => {
                ifname(d, "bridge_name", true)?;
                ifname(d, "uplink_interface", false)?;
            }
            "interface" => {
                if !ifname(d, "interface", false)? {
                    ifname(d, "name", true).map_err(|_| "missing \"interface\" (or \"name\")".to_string())?;
                }
            }
            "port" => {
                ifname(d, "port", true)?;
                ifname(d, "bridge_name", false)?;
            }
            "connection" => {
                if text(d, "connection", false)?.is_none() {
                    text(d, "name", true).map_err(|_| "missing \"connection\" (or \"name\")".to_string())?;
                }
            }
            _ => {
                let mut any = false;
                for key in ["bridge_name", "uplink_interface", "interface", "port"] {
                    any |= ifname(d, key, false)?;
                }
                any |= text(d, "connection", false)?.is_some();
                if !any {
                    return Err("names no bridge_name, interface, port or connection".into());
                }
            }
        }
        Ok(())
    }
}

/// Configuration and policy changes.
pub struct SettingsPlugin;

impl LedgerPlugin for SettingsPlugin {
    fn name(&self) -> &str {
        "settings-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["settings", "policy"].map(String::from).to_vec()
    }
    fn validate_data(&self, _category: &str, d: &Value) -> Result<(), String> {
        text(d, "key", true)?;
        if d.get("value").is_none() {
            return Err("missing \"value\"".into());
        }
        Ok(())
    }
}

/// Authentication and authorisation events.
pub struct UserPlugin;

impl LedgerPlugin for UserPlugin {
    fn name(&self) -> &str {
        "user-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["user", "auth"].map(String::from).to_vec()
    }
    fn validate_data(&self, _category: &str, d: &Value) -> Result<(), String> {
        let name = text(d, "username", true)?.unwrap_or_default();
        let ok = name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(format!("\"username\" {name:?} is not a user name"));
        }
        Ok(())
    }
}

/// File system and mount operations.
pub struct StoragePlugin;

impl LedgerPlugin for StoragePlugin {
    fn name(&self) -> &str {
        "storage-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["storage", "mount", "filesystem"].map(String::from).to_vec()
    }
    fn validate_data(&self, _category: &str, d: &Value) -> Result<(), String> {
        let path = text(d, "path", false)?;
        let device = text(d, "device", false)?;
        if path.is_none() && device.is_none() {
            return Err("names no \"path\" or \"device\"".into());
        }
        for p in path.iter().chain(device.iter()) {
            if !p.starts_with('/') {
                return Err(format!("{p:?} is not an absolute path"));
            }
        }
        Ok(())
    }
}

/// The DRX runtime: data-plane programs ("ebpf"), trust changes ("trust"),
/// vPod ports ("vpod"), QLock identities and sessions ("qlock") and path
/// proofs checked ("pof").
pub struct DrxPlugin;

impl LedgerPlugin for DrxPlugin {
    fn name(&self) -> &str {
        "drx-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["ebpf", "trust", "vpod", "qlock", "pof"].map(String::from).to_vec()
    }
    fn validate_data(&self, category: &str, d: &Value) -> Result<(), String> {
        match category {
            "ebpf" => {
                ifname(d, "interface", true)?;
                text(d, "program", true)?;
            }
            "vpod" => {
                if !d.get("port").and_then(Value::as_u64).is_some_and(|p| (1..=65535).contains(&p)) {
                    return Err("\"port\" must be a port number (1-65535)".into());
                }
                text(d, "service", true)?;
            }
            "pof" => {
                text(d, "path_id", true)?;
                let h = text(d, "proof_hash", true)?.unwrap_or_default();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("\"proof_hash\" {h:?} is not a SHA-256 (64 hex digits)"));
                }
                if !d.get("valid").is_some_and(Value::is_boolean) {
                    return Err("\"valid\" must be true or false".into());
                }
            }
            "qlock" => {
                let id = text(d, "node_id", true)?.unwrap_or_default();
                if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("\"node_id\" {id:?} is not a QLock node id (64 hex digits)"));
                }
                if d.get("key").is_some() {
                    return Err("a session's key is never recorded, only its fingerprint".into());
                }
            }
            _ => {
                let changes = d.get("changes").ok_or("missing \"changes\"")?;
                if changes.as_array().is_none_or(|a| a.is_empty()) {
                    return Err("\"changes\" must be a non-empty list".into());
                }
            }
        }
        Ok(())
    }
}

/// The operating system's own changes: updates ("update": a version
/// written, activated or rolled back to) and boot health checks ("health").
pub struct SystemPlugin;

impl LedgerPlugin for SystemPlugin {
    fn name(&self) -> &str {
        "system-plugin"
    }
    fn categories(&self) -> Vec<String> {
        ["update", "health"].map(String::from).to_vec()
    }
    fn validate_data(&self, category: &str, d: &Value) -> Result<(), String> {
        text(d, "version", true)?;
        if category == "health" && !d.get("healthy").is_some_and(Value::is_boolean) {
            return Err("\"healthy\" must be true or false".into());
        }
        Ok(())
    }
}

/// The plugins in force, by category.
pub struct Plugins {
    list: Vec<Box<dyn LedgerPlugin>>,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins { list: vec![Box::new(NetworkPlugin), Box::new(SettingsPlugin), Box::new(UserPlugin), Box::new(StoragePlugin), Box::new(DrxPlugin), Box::new(SystemPlugin)] }
    }
}

impl Plugins {
    pub fn categories(&self) -> Vec<String> {
        let mut all: Vec<String> = self.list.iter().flat_map(|p| p.categories()).collect();
        all.sort();
        all
    }

    /// Checks one submission and returns (producer, canonical data) per record.
    pub fn prepare(&self, category: &str, data: &str) -> Result<Vec<(String, String)>> {
        let plugin = self.list.iter().find(|p| p.categories().iter().any(|c| c == category)).ok_or_else(|| {
            LedgerError::UnknownCategory { category: category.to_string(), known: self.categories().join(", ") }
        })?;
        let value: Value = crate::block::parse_data(data)?;
        if !value.is_object() {
            return Err(LedgerError::BadData("data must be a JSON object".into()));
        }
        plugin
            .validate_data(category, &value)
            .map_err(|why| LedgerError::BadData(format!("{} data for {}: {why}", category, plugin.name())))?;
        plugin
            .process_data(category, value)?
            .iter()
            .map(|v| Ok((plugin.name().to_string(), crate::block::canonical_value(v)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_and_health_name_a_version() {
        let p = Plugins::default();
        assert_eq!(p.prepare("update", r#"{"version":"0.2.0","step":"written"}"#).unwrap()[0].0, "system-plugin");
        assert!(p.prepare("update", r#"{"step":"written"}"#).is_err());
        assert!(p.prepare("health", r#"{"version":"0.2.0"}"#).is_err());
        assert!(p.prepare("health", r#"{"version":"0.2.0","healthy":false}"#).is_ok());
    }

    #[test]
    fn the_seed_example_is_accepted_as_network_and_as_bridge() {
        let p = Plugins::default();
        let data = r#"{"bridge_name": "ovsbr0", "uplink_interface": "enp2s0", "configuration": {"stp": false}}"#;
        for cat in ["network", "bridge"] {
            let out = p.prepare(cat, data).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "network-plugin");
            assert!(out[0].1.starts_with(r#"{"bridge_name":"ovsbr0","configuration""#));
        }
    }

    #[test]
    fn each_plugin_refuses_bad_shapes_with_a_reason() {
        let p = Plugins::default();
        let cases = [
            ("bridge", r#"{"uplink_interface":"eth0"}"#, "missing \"bridge_name\""),
            ("bridge", r#"{"bridge_name":"a/b"}"#, "not an interface name"),
            ("bridge", r#"{"bridge_name":"averyveryverylongname"}"#, "not an interface name"),
            ("network", r#"{"foo":1}"#, "names no"),
            ("interface", r#"{"mtu":1500}"#, "missing"),
            ("settings", r#"{"key":"mtu"}"#, "missing \"value\""),
            ("user", r#"{"username":"bad name"}"#, "not a user name"),
            ("storage", r#"{"path":"relative"}"#, "absolute"),
            ("storage", r#"{}"#, "names no"),
            ("port", r#"{"port":7}"#, "must be a string"),
            ("ebpf", r#"{"interface":"eth0"}"#, "missing \"program\""),
            ("trust", r#"{"changes":[]}"#, "non-empty list"),
            ("qlock", r#"{"session":"ab"}"#, "missing \"node_id\""),
            ("qlock", r#"{"node_id":"xyz"}"#, "not a QLock node id"),
            ("pof", r#"{"path_id":"p","proof_hash":"00","valid":true}"#, "not a SHA-256"),
            ("pof", r#"{"path_id":"p","proof_hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#, "\"valid\" must be"),
        ];
        for (cat, data, want) in cases {
            let e = p.prepare(cat, data).unwrap_err().to_string();
            assert!(e.contains(want), "{cat} {data}: {e}");
        }
        let e = p.prepare("weather", "{}").unwrap_err().to_string();
        assert!(e.contains("unknown category \"weather\"") && e.contains("bridge"), "{e}");
        assert!(p.prepare("bridge", "[]").is_err());
        assert!(p.prepare("bridge", "{oops").unwrap_err().to_string().contains("not valid JSON"));
    }

    #[test]
    fn good_shapes_pass() {
        let p = Plugins::default();
        for (cat, data) in [
            ("interface", r#"{"name":"eth0","mtu":9000}"#),
            ("port", r#"{"port":"vnet3","bridge_name":"br0"}"#),
            ("connection", r#"{"connection":"uplink"}"#),
            ("policy", r#"{"key":"trust_floor","value":0.7}"#),
            ("auth", r#"{"username":"root","result":"denied"}"#),
            ("mount", r#"{"path":"/bpi/data","device":"/dev/vda4"}"#),
            ("ebpf", r#"{"interface":"ens3","program":"xdp_trust_routing","mode":"native"}"#),
            ("trust", r#"{"changes":[{"write":"put_node","node":7,"score":850000}]}"#),
            ("qlock", r#"{"node_id":"4f7a000000000000000000000000000000000000000000000000000000000001","session":"ab","fingerprint":"00"}"#),
        ] {
            p.prepare(cat, data).unwrap_or_else(|e| panic!("{cat}: {e}"));
        }
    }
}
