//! Open vSwitch's own view, from ovsdb through `ovs-vsctl --format=json`
//! (the seed's first validation layer: the bridge and its ports exist).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bpi_support::Cmd;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    pub name: String,
    pub ports: Vec<String>,
    pub datapath_type: String,
    pub stp: bool,
}

/// One table of `ovs-vsctl --format=json list TABLE`, as rows of
/// column -> value (ovsdb's JSON: `["set", [...]]`, `["uuid", "..."]`,
/// `["map", [[k, v], ...]]`, or a plain value).
pub fn parse_table(json: &str) -> Result<Vec<BTreeMap<String, Value>>> {
    let v: Value = serde_json::from_str(json).context("ovs-vsctl's JSON")?;
    let headings: Vec<String> = v["headings"].as_array().context("no headings")?.iter().filter_map(|h| h.as_str().map(str::to_string)).collect();
    let rows = v["data"].as_array().context("no data")?;
    Ok(rows
        .iter()
        .filter_map(|r| r.as_array())
        .map(|r| headings.iter().cloned().zip(r.iter().cloned()).collect())
        .collect())
}

/// The members of an ovsdb set (a single member is written bare).
fn set_members(v: &Value) -> Vec<Value> {
    match v.as_array() {
        Some(a) if a.first().and_then(Value::as_str) == Some("set") => a.get(1).and_then(Value::as_array).cloned().unwrap_or_default(),
        Some(a) if a.first().and_then(Value::as_str) == Some("uuid") => vec![v.clone()],
        _ => vec![v.clone()],
    }
}

fn uuid(v: &Value) -> Option<&str> {
    let a = v.as_array()?;
    (a.first()?.as_str()? == "uuid").then(|| a.get(1)?.as_str()).flatten()
}

/// Bridges with the names of their ports, from the Bridge and Port tables.
pub fn bridges_from(bridge_json: &str, port_json: &str) -> Result<Vec<Bridge>> {
    let ports: BTreeMap<String, String> = parse_table(port_json)?
        .into_iter()
        .filter_map(|r| Some((uuid(r.get("_uuid")?)?.to_string(), r.get("name")?.as_str()?.to_string())))
        .collect();
    let mut out = Vec::new();
    for r in parse_table(bridge_json)? {
        let name = r.get("name").and_then(Value::as_str).context("a bridge without a name")?.to_string();
        let mut port_names: Vec<String> = r.get("ports").map(set_members).unwrap_or_default().iter().filter_map(uuid).filter_map(|u| ports.get(u).cloned()).collect();
        port_names.sort();
        let datapath_type = r.get("datapath_type").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("system").to_string();
        let stp = r.get("stp_enable").and_then(Value::as_bool).unwrap_or(false);
        out.push(Bridge { name, ports: port_names, datapath_type, stp });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The bridges ovsdb holds now.
pub fn bridges() -> Result<Vec<Bridge>> {
    let list = |table: &str| Cmd::new("ovs-vsctl").args(["--format=json", "--data=json", "list", table]).output();
    bridges_from(&list("Bridge")?, &list("Port")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // As `ovs-vsctl --format=json --data=json list Bridge|Port` prints them
    // (columns cut to those read here).
    const BRIDGES: &str = r#"{"data":[[["uuid","b1"],"","ovsbr0",["set",[["uuid","p1"],["uuid","p2"]]],false],[["uuid","b2"],"netdev","ovsbr1",["uuid","p3"],true]],"headings":["_uuid","datapath_type","name","ports","stp_enable"]}"#;
    const PORTS: &str = r#"{"data":[[["uuid","p1"],"ovsbr0"],[["uuid","p2"],"ens3"],[["uuid","p3"],"vi100"]],"headings":["_uuid","name"]}"#;

    #[test]
    fn bridges_and_their_ports_from_ovsdb_json() {
        let b = bridges_from(BRIDGES, PORTS).unwrap();
        assert_eq!(b[0], Bridge { name: "ovsbr0".into(), ports: vec!["ens3".into(), "ovsbr0".into()], datapath_type: "system".into(), stp: false });
        assert_eq!(b[1], Bridge { name: "ovsbr1".into(), ports: vec!["vi100".into()], datapath_type: "netdev".into(), stp: true });
        assert!(bridges_from("{}", PORTS).is_err());
        assert_eq!(bridges_from(r#"{"data":[],"headings":["name"]}"#, PORTS).unwrap(), vec![]);
    }
}
