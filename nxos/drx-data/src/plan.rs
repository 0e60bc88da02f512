//! A batch of trust changes, planned into the map writes that carry it out.
//! Pure: it reads only the current routes and settings it is given.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::{
    layout::{Settings, MAX_PREFIXES},
    prefix::Prefix,
};

/// What an operator or the control plane asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    SetScore { node: u32, score: u32 },
    RemoveNode { node: u32 },
    MapPrefix { prefix: Prefix, node: u32 },
    UnmapPrefix { prefix: Prefix },
    Settings(Settings),
}

/// Where a prefix leads: its node, and its per-prefix counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub node: u32,
    pub slot: u32,
}

/// One write to the tables of a generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "write", rename_all = "snake_case")]
pub enum Write {
    PutNode { node: u32, score: u32 },
    DeleteNode { node: u32 },
    PutRoute { prefix: Prefix, node: u32, slot: u32 },
    DeleteRoute { prefix: Prefix },
    PutSettings { settings: Settings },
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Counter slots newly given to a prefix; zeroed before use.
    pub fresh_slots: Vec<u32>,
}

impl Plan {
    pub fn touches_routes(ops: &[Op]) -> bool {
        ops.iter().any(|op| matches!(op, Op::MapPrefix { .. } | Op::UnmapPrefix { .. }))
    }
}

/// Plans `ops` against the current `routes` (needed only when the batch maps
/// or unmaps prefixes). Later ops in a batch win over earlier ones.
pub fn plan(ops: &[Op], routes: &BTreeMap<Prefix, Route>) -> Result<Plan> {
    if ops.is_empty() {
        bail!("nothing to change: the batch is empty");
    }
    let mut routes_after = routes.clone();
    let mut used: BTreeSet<u32> = routes.values().map(|r| r.slot).collect();
    let mut next_free = 0u32;
    let mut plan = Plan::default();
    for op in ops {
        match op {
            Op::SetScore { node, score } => {
                if *score > crate::layout::SCORE_SCALE {
                    bail!("node {node}: score {score} is past 1.0 in fixed point");
                }
                plan.writes.push(Write::PutNode { node: *node, score: *score });
            }
            Op::RemoveNode { node } => plan.writes.push(Write::DeleteNode { node: *node }),
            Op::MapPrefix { prefix, node } => {
                let slot = match routes_after.get(prefix) {
                    Some(r) => r.slot,
                    None => {
                        while used.contains(&next_free) {
                            next_free += 1;
                        }
                        if next_free >= MAX_PREFIXES {
                            bail!("{prefix}: the tables are full ({MAX_PREFIXES} prefixes); unmap some first");
                        }
                        used.insert(next_free);
                        plan.fresh_slots.push(next_free);
                        next_free
                    }
                };
                routes_after.insert(*prefix, Route { node: *node, slot });
                plan.writes.push(Write::PutRoute { prefix: *prefix, node: *node, slot });
            }
            Op::UnmapPrefix { prefix } => {
                if routes_after.remove(prefix).is_none() {
                    bail!("{prefix} is not mapped to any node; see `bpi-os nxos trust show`");
                }
                plan.writes.push(Write::DeleteRoute { prefix: *prefix });
            }
            Op::Settings(s) => {
                if s.threshold > crate::layout::SCORE_SCALE {
                    bail!("threshold {} is past 1.0 in fixed point", s.threshold);
                }
                plan.writes.push(Write::PutSettings { settings: *s });
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn new_prefixes_take_the_lowest_free_slots_and_keep_them() {
        let mut routes = BTreeMap::new();
        routes.insert(p("10.0.0.0/8"), Route { node: 1, slot: 0 });
        routes.insert(p("10.1.0.0/16"), Route { node: 1, slot: 2 });
        let ops = vec![
            Op::MapPrefix { prefix: p("192.0.2.0/24"), node: 7 },
            Op::MapPrefix { prefix: p("10.0.0.0/8"), node: 9 },
            Op::MapPrefix { prefix: p("2001:db8::/32"), node: 7 },
        ];
        let plan = plan(&ops, &routes).unwrap();
        assert_eq!(plan.fresh_slots, vec![1, 3]);
        assert_eq!(
            plan.writes,
            vec![
                Write::PutRoute { prefix: p("192.0.2.0/24"), node: 7, slot: 1 },
                Write::PutRoute { prefix: p("10.0.0.0/8"), node: 9, slot: 0 },
                Write::PutRoute { prefix: p("2001:db8::/32"), node: 7, slot: 3 },
            ]
        );
    }

    #[test]
    fn unmapping_an_unknown_prefix_fails_the_whole_batch() {
        let ops = vec![Op::SetScore { node: 1, score: 5 }, Op::UnmapPrefix { prefix: p("10.0.0.0/8") }];
        let err = plan(&ops, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/8 is not mapped"), "{err}");
        // Mapped earlier in the same batch: fine.
        let ops = vec![Op::MapPrefix { prefix: p("10.0.0.0/8"), node: 1 }, Op::UnmapPrefix { prefix: p("10.0.0.0/8") }];
        assert_eq!(plan(&ops, &BTreeMap::new()).unwrap().writes.len(), 2);
    }

    #[test]
    fn refuses_empty_batches_and_out_of_range_scores() {
        assert!(plan(&[], &BTreeMap::new()).is_err());
        assert!(plan(&[Op::SetScore { node: 1, score: 1_000_001 }], &BTreeMap::new()).is_err());
        let s = Settings { threshold: 2_000_000, ..Settings::default() };
        assert!(plan(&[Op::Settings(s)], &BTreeMap::new()).is_err());
    }
}
