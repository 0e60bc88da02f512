//! `bpi-os nxos metrics` (docs/metrics.md): the seed's network metrics from
//! their three sources, the XDP data plane (counters and the kernel's
//! run-time statistics), the control plane and QLock. A source that is not
//! there is null, never zero; in Prometheus text it is `bpi_source_up` 0.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bpi_drx_data::{stats, tables::Tables};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{control, output::Json};

#[derive(Args)]
pub struct MetricsArgs {
    /// Sample again and again (every --interval), each with rates since the one before.
    #[arg(long)]
    real_time: bool,
    /// Seconds between samples with --real-time.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, requires = "real_time")]
    interval: f64,
    /// Stop after this many samples (default with --real-time: until interrupted).
    #[arg(long, value_name = "N", requires = "real_time", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Every counter: per-reason packets, the control plane's own counters, each session.
    #[arg(long)]
    detailed: bool,
    /// Prometheus text exposition format instead of text or JSON.
    #[arg(long, conflicts_with = "style")]
    prometheus: bool,
    /// With --prometheus: write the text atomically to this file (node_exporter's textfile collector) instead of stdout.
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    textfile: Option<PathBuf>,
    #[command(flatten)]
    source: control::Source,
    #[command(flatten)]
    json: Json,
}

/// One reading of every source; None where the source did not answer.
struct Reading {
    at: Instant,
    time: u64,
    data_plane: Option<DataPlane>,
    control: Option<bpi_drx_control::engine::Metrics>,
    routes: Option<u64>,
    sessions: Option<Vec<bpi_qlock::session::SessionView>>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct DataPlane {
    packets: u64,
    bytes: u64,
    reasons: serde_json::Map<String, Value>,
    run: stats::RunStats,
}

/// The connections a run keeps: made once, used for every sample.
struct Sources<'a> {
    pin_dir: &'a Path,
    tables: Option<Tables>,
    control: Option<(zbus::blocking::Connection, bpi_drx_control::service::Control1ProxyBlocking<'static>)>,
    offline: Option<bpi_drx_control::engine::Engine>,
    qlock: Option<(zbus::blocking::Connection, bpi_qlock::service::QLock1ProxyBlocking<'static>)>,
}

impl Sources<'_> {
    fn read(&self) -> Reading {
        let data_plane = self.tables.as_ref().and_then(|t| {
            let reasons = t.reason_counters().ok()?;
            let mut dp = DataPlane { run: stats::attached(self.pin_dir).unwrap_or_default(), ..Default::default() };
            for (r, c) in reasons {
                dp.packets += c.packets;
                dp.bytes += c.bytes;
                dp.reasons.insert(r.name().into(), json!(c.packets));
            }
            Some(dp)
        });
        let (control, routes) = match (&self.offline, &self.control) {
            (Some(e), _) => (Some(e.metrics.clone()), Some(e.routing_table().len() as u64)),
            (None, Some((_, p))) => (p.metrics().ok(), p.routing_table().ok().map(|r| r.len() as u64)),
            (None, None) => (None, None),
        };
        let sessions = self.qlock.as_ref().and_then(|(_, p)| p.sessions().ok());
        Reading { at: Instant::now(), time: crate::update::now(), data_plane, control, routes, sessions }
    }
}

fn count_sessions(s: &[bpi_qlock::session::SessionView], pred: impl Fn(&bpi_qlock::session::SessionView) -> bool) -> u64 {
    s.iter().filter(|v| pred(v)).count() as u64
}

/// The report of one reading, with rates against the previous one when there is one.
fn report(r: &Reading, prev: Option<&Reading>, detailed: bool) -> Value {
    let interval = prev.map(|p| r.at.duration_since(p.at).as_secs_f64());
    let delta = |f: fn(&DataPlane) -> u64| -> Option<u64> {
        Some(f(r.data_plane.as_ref()?).saturating_sub(f(prev?.data_plane.as_ref()?)))
    };
    let pps = match (delta(|d| d.packets), interval) {
        (Some(n), Some(s)) if s > 0.0 => Some(n as f64 / s),
        _ => None,
    };
    // Time per packet: between samples when there are two, else since the kernel began counting.
    let ns = match (delta(|d| d.run.run_time_ns), delta(|d| d.run.run_count)) {
        (Some(t), Some(c)) if c > 0 && t > 0 => Some(t as f64 / c as f64),
        (Some(_), Some(_)) => None,
        _ => r.data_plane.as_ref().and_then(|d| (d.run.run_count > 0 && d.run.run_time_ns > 0).then(|| d.run.run_time_ns as f64 / d.run.run_count as f64)),
    };
    let sessions = r.sessions.as_deref();
    let mut v = json!({
        "time": r.time,
        "interval_s": interval,
        "packets_per_second": pps,
        "ns_per_packet": ns,
        "packets": r.data_plane.as_ref().map(|d| d.packets),
        "nodes": r.control.as_ref().map(|c| c.nodes),
        "routes": r.routes,
        "changes": r.control.as_ref().map(|c| c.changes),
        "active_sessions": sessions.map(|s| count_sessions(s, |v| v.state == "active")),
        "expired_sessions": sessions.map(|s| count_sessions(s, |v| v.reason == "expired")),
        // Proof-of-forward (issue 22) does not verify paths yet: unknown, not zero.
        "verified_paths": Value::Null,
        "sources": {
            "data_plane": r.data_plane.is_some(),
            "control_plane": r.control.is_some(),
            "qlock": sessions.is_some(),
        },
    });
    if detailed {
        v["data_plane"] = r.data_plane.as_ref().map_or(Value::Null, |d| serde_json::to_value(d).unwrap_or_default());
        v["control_plane"] = r.control.as_ref().map_or(Value::Null, |c| serde_json::to_value(c).unwrap_or_default());
        v["sessions"] = sessions.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or_default());
    }
    v
}

/// The Prometheus text exposition format of a report: each metric once, with
/// HELP and TYPE; a missing value is left out and its source marked down.
fn prometheus(v: &Value) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, Option<f64>)]| {
        let present: Vec<_> = samples.iter().filter_map(|(labels, x)| x.map(|x| (labels, x))).collect();
        if present.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, x) in present {
            let _ = writeln!(out, "{name}{labels} {x}");
        }
    };
    let num = |k: &str| v[k].as_f64();
    let up = |k: &str| Some(if v["sources"][k].as_bool() == Some(true) { 1.0 } else { 0.0 });
    metric(
        "bpi_source_up",
        "gauge",
        "Whether a metrics source answered (1) or not (0).",
        &["data_plane", "control_plane", "qlock"].map(|s| (format!("{{source=\"{s}\"}}"), up(s))),
    );
    metric("bpi_xdp_packets_total", "counter", "Packets the XDP programs have seen, over every verdict.", &[(String::new(), num("packets"))]);
    metric("bpi_xdp_packets_per_second", "gauge", "Packets per second through XDP since the previous sample.", &[(String::new(), num("packets_per_second"))]);
    metric("bpi_xdp_ns_per_packet", "gauge", "Kernel-measured run time of the XDP programs per packet, in nanoseconds.", &[(String::new(), num("ns_per_packet"))]);
    metric("bpi_control_nodes", "gauge", "Nodes in the Meta-RIB.", &[(String::new(), num("nodes"))]);
    metric("bpi_control_routes", "gauge", "Routes in the local node's routing table.", &[(String::new(), num("routes"))]);
    metric("bpi_control_changes_total", "counter", "Changes the control plane has made since it started.", &[(String::new(), num("changes"))]);
    metric(
        "bpi_qlock_sessions",
        "gauge",
        "QLock sessions the daemon lists, by state.",
        &[("{state=\"active\"}".to_string(), num("active_sessions")), ("{state=\"expired\"}".to_string(), num("expired_sessions"))],
    );
    out
}

fn text(v: &Value) -> String {
    let f = |k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or_default()),
        x => x.to_string(),
    };
    let down: Vec<&str> = ["data_plane", "control_plane", "qlock"].into_iter().filter(|s| v["sources"][s] != true).collect();
    format!(
        "packets/s {}  ns/packet {}  nodes {}  routes {}  changes {}  sessions {} active, {} expired  verified paths -{}",
        f("packets_per_second"),
        f("ns_per_packet"),
        f("nodes"),
        f("routes"),
        f("changes"),
        f("active_sessions"),
        f("expired_sessions"),
        if down.is_empty() { String::new() } else { format!("  (not running: {})", down.join(", ")) }
    )
}

fn emit(args: &MetricsArgs, v: &Value) -> Result<()> {
    if args.prometheus {
        let body = prometheus(v);
        match &args.textfile {
            Some(f) => bpi_support::fsmode::write_atomic(f, body.as_bytes(), 0o644).map_err(|e| anyhow::anyhow!("writing {}: {e}", f.display()))?,
            None => print!("{body}"),
        }
    } else if args.json.on() {
        args.json.print(v)?;
    } else {
        println!("{}", text(v));
        if args.detailed {
            for k in ["data_plane", "control_plane"] {
                println!("  {k}: {}", v[k]);
            }
        }
    }
    Ok(())
}

pub fn run(pin_dir: &Path, args: MetricsArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0 && args.interval <= 3600.0) {
        bail!("--interval {}: give seconds between 0 and 3600", args.interval);
    }
    let offline = control::offline(&args.source)?;
    let bus = args.source.bus.as_deref();
    let sources = Sources {
        pin_dir,
        tables: Tables::open(pin_dir).ok(),
        control: if offline.is_some() { None } else { bpi_drx_control::service::connect(bus) },
        offline,
        qlock: bpi_qlock::service::connect(bus),
    };
    // The kernel times programs only while asked to; held for the whole run.
    let _stats = if args.real_time && sources.tables.is_some() { stats::enable().ok() } else { None };
    let mut prev = sources.read();
    if !args.real_time {
        return emit(&args, &report(&prev, None, args.detailed));
    }
    let mut n = 0;
    while args.count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(args.interval));
        let now = sources.read();
        emit(&args, &report(&now, Some(&prev), args.detailed))?;
        prev = now;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, packets: u64, run: (u64, u64), with_control: bool) -> Reading {
        let dp = DataPlane { packets, bytes: packets * 100, reasons: Default::default(), run: stats::RunStats { programs: 1, run_time_ns: run.0, run_count: run.1 } };
        let control = with_control.then(|| bpi_drx_control::engine::Metrics { nodes: 4, changes: 2, ..Default::default() });
        Reading { at, time: 1000, data_plane: Some(dp), control, routes: with_control.then_some(3), sessions: None }
    }

    #[test]
    fn rates_come_from_two_samples_and_missing_sources_are_null() {
        let t0 = Instant::now();
        let a = reading(t0, 1_000, (50_000, 1_000), false);
        let b = reading(t0 + Duration::from_secs(2), 5_000, (250_000, 5_000), false);
        let one = report(&a, None, false);
        assert_eq!(one["packets_per_second"], Value::Null);
        assert_eq!(one["ns_per_packet"], 50.0);
        let two = report(&b, Some(&a), false);
        assert_eq!(two["packets_per_second"], 2_000.0);
        assert_eq!(two["ns_per_packet"], 50.0);
        assert_eq!(two["nodes"], Value::Null);
        assert_eq!(two["active_sessions"], Value::Null);
        assert_eq!(two["verified_paths"], Value::Null);
        assert_eq!(two["sources"], json!({"data_plane": true, "control_plane": false, "qlock": false}));
    }

    /// Checked line by line: HELP and TYPE before each metric, labels, values, and nothing for a source that is down.
    #[test]
    fn the_prometheus_text_is_the_exposition_format() {
        let t0 = Instant::now();
        let mut b = reading(t0 + Duration::from_secs(1), 300, (9_000, 300), true);
        b.sessions = Some(vec![
            bpi_qlock::session::SessionView { state: "active".into(), ..Default::default() },
            bpi_qlock::session::SessionView { state: "ended".into(), reason: "expired".into(), ..Default::default() },
        ]);
        let text = prometheus(&report(&b, Some(&reading(t0, 100, (3_000, 100), true)), false));
        let want = [
            "# HELP bpi_source_up Whether a metrics source answered (1) or not (0).",
            "# TYPE bpi_source_up gauge",
            "bpi_source_up{source=\"data_plane\"} 1",
            "bpi_source_up{source=\"control_plane\"} 1",
            "bpi_source_up{source=\"qlock\"} 1",
            "# HELP bpi_xdp_packets_total Packets the XDP programs have seen, over every verdict.",
            "# TYPE bpi_xdp_packets_total counter",
            "bpi_xdp_packets_total 300",
            "# HELP bpi_xdp_packets_per_second Packets per second through XDP since the previous sample.",
            "# TYPE bpi_xdp_packets_per_second gauge",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..want.len()], &want);
        let pps: f64 = lines[want.len()].strip_prefix("bpi_xdp_packets_per_second ").unwrap().parse().unwrap();
        assert!((pps - 200.0).abs() < 1.0, "{pps}");
        for line in ["bpi_xdp_ns_per_packet 30", "bpi_control_nodes 4", "bpi_control_routes 3", "bpi_control_changes_total 2", "bpi_qlock_sessions{state=\"active\"} 1", "bpi_qlock_sessions{state=\"expired\"} 1"] {
            assert!(lines.contains(&line), "no '{line}' in\n{text}");
        }
        // Every sample line is a name, optional labels, and a number.
        for l in lines.iter().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("bpi_") && value.parse::<f64>().is_ok(), "{l}");
        }
        let down = prometheus(&report(&Reading { at: t0, time: 1, data_plane: None, control: None, routes: None, sessions: None }, None, false));
        assert!(down.contains("bpi_source_up{source=\"data_plane\"} 0") && !down.contains("bpi_xdp_packets_total"), "{down}");
    }
}
