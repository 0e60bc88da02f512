//! The seed's port ranges, by name. The seed puts 8080 and 8081 both in
//! its special ports and inside its dynamic range; here they are special only.

use anyhow::{bail, Result};

#[derive(Debug)]
pub struct Range {
    pub name: &'static str,
    pub what: &'static str,
    pub ports: &'static [(u16, u16)],
}

/// In the seed's order; `special` is three single ports.
pub const RANGES: &[Range] = &[
    Range { name: "core", what: "core BPI services", ports: &[(7777, 7780)] },
    Range { name: "vm-cluster", what: "VM cluster services", ports: &[(7800, 7804)] },
    Range { name: "storage", what: "storage services", ports: &[(7820, 7824)] },
    Range { name: "security", what: "security services", ports: &[(7830, 7833)] },
    Range { name: "network", what: "network services", ports: &[(7840, 7844)] },
    Range { name: "monitoring", what: "monitoring services", ports: &[(7850, 7859)] },
    Range { name: "development", what: "development services", ports: &[(7860, 7869)] },
    // The seed's 7900-8777, less the special ports inside it (8080, 8081):
    // a port belongs to one range.
    Range { name: "dynamic", what: "dynamic applications", ports: &[(7900, 8079), (8082, 8777)] },
    Range { name: "special", what: "special services", ports: &[(8080, 8080), (8081, 8081), (8888, 8888)] },
];

pub fn by_name(name: &str) -> Result<&'static Range> {
    match RANGES.iter().find(|r| r.name == name) {
        Some(r) => Ok(r),
        None => bail!("unknown port range {name:?}; the ranges are {}", RANGES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")),
    }
}

/// The range a port belongs to.
pub fn of_port(port: u16) -> Option<&'static Range> {
    RANGES.iter().find(|r| r.contains(port))
}

impl Range {
    pub fn contains(&self, port: u16) -> bool {
        self.ports.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().flat_map(|&(a, b)| a..=b)
    }

    pub fn size(&self) -> usize {
        self.iter().count()
    }

    pub fn describe(&self) -> String {
        self.ports.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_ranges_do_not_overlap() {
        assert_eq!(by_name("core").unwrap().size(), 4);
        assert_eq!(by_name("dynamic").unwrap().size(), 876);
        assert_eq!(by_name("dynamic").unwrap().describe(), "7900-8079, 8082-8777");
        assert_eq!(by_name("special").unwrap().iter().collect::<Vec<_>>(), vec![8080, 8081, 8888]);
        assert_eq!(by_name("special").unwrap().describe(), "8080, 8081, 8888");
        let e = by_name("web").unwrap_err().to_string();
        assert!(e.contains("unknown port range \"web\"") && e.contains("core, vm-cluster"), "{e}");
        for p in 0..=u16::MAX {
            assert!(RANGES.iter().filter(|r| r.contains(p)).count() <= 1, "port {p} in two ranges");
        }
        assert_eq!(of_port(7850).unwrap().name, "monitoring");
        assert!(of_port(7781).is_none());
    }
}
