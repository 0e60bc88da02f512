//! Machine output, the same on every command: `--json` (pretty, the default)
//! or `--json=short` (one line per document), as systemd's tools take it.

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JsonStyle {
    /// Indented, for people reading JSON.
    Pretty,
    /// One line per document, for pipes.
    Short,
}

#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Json {
    /// Print JSON instead of text: --json or --json=pretty (indented), --json=short (one line).
    #[arg(long = "json", value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "pretty", value_name = "STYLE")]
    style: Option<JsonStyle>,
}

/// What every command that changes state over D-Bus takes: show the change
/// only, machine output, and the bus its service is on.
#[derive(Args, Clone, Debug)]
pub struct ChangeArgs {
    /// Show what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub json: Json,
    /// The service's D-Bus address (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus: Option<String>,
}

impl Json {
    pub fn on(&self) -> bool {
        self.style.is_some()
    }

    pub fn render<T: Serialize + ?Sized>(&self, v: &T) -> Result<String> {
        Ok(match self.style {
            Some(JsonStyle::Short) => serde_json::to_string(v)?,
            _ => serde_json::to_string_pretty(v)?,
        })
    }

    /// Prints `v` on stdout.
    pub fn print<T: Serialize + ?Sized>(&self, v: &T) -> Result<()> {
        println!("{}", self.render(v)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        json: Json,
    }

    #[test]
    fn json_takes_no_value_or_a_style() {
        let v = serde_json::json!({ "a": [1, 2] });
        assert!(!T::parse_from(["t"]).json.on());
        let pretty = T::parse_from(["t", "--json"]).json;
        assert!(pretty.on() && pretty.render(&v).unwrap().contains('\n'));
        assert_eq!(T::parse_from(["t", "--json=short"]).json.render(&v).unwrap(), r#"{"a":[1,2]}"#);
        assert!(T::try_parse_from(["t", "--json=yaml"]).is_err());
    }
}
