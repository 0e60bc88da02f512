//! Every configuration file bpi-os reads is TOML, parsed by one parser (the
//! `toml` crate) into typed structs. Errors read `FILE:LINE: message`, the
//! line taken from the parser's spans; values a loader checks itself are
//! `toml::Spanned` so its errors carry their line too.

use std::ops::Range;

use anyhow::Result;
use serde::de::DeserializeOwned;
pub use toml::Spanned;

/// A file's text and the name its errors carry.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str, origin: &'a str) -> Self {
        Source { text, origin }
    }

    /// Parses the whole file as `T` (unknown keys are the struct's to refuse).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(self.text).map_err(|e| {
            let line = e.span().map_or(1, |s| self.line_at(s.start));
            anyhow::anyhow!("{}:{line}: {}", self.origin, e.message().trim_end())
        })
    }

    /// The 1-based line holding byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    /// `FILE:LINE` of a span.
    pub fn at(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.origin, self.line_at(span.start))
    }

    /// An error at a value: `FILE:LINE: message`.
    pub fn error<T>(&self, value: &Spanned<T>, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {message}", self.at(value.span()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        node: Vec<Spanned<Node>>,
        control: Option<Spanned<Control>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        id: Spanned<String>,
        score: Option<Spanned<f64>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Control {
        local: String,
    }

    const TEXT: &str = "# a comment\n[control]   # after a header\nlocal = \"a\"\n\n[[node]]  # one\nid = \"a\"\nscore = 0.5\n\n[[node]]\nid = \"b\"\n";

    #[test]
    fn spans_give_lines_of_tables_and_values() {
        let src = Source::new(TEXT, "t.toml");
        let f: File = src.parse().unwrap();
        assert_eq!(f.node.len(), 2);
        assert_eq!(src.line_at(f.node[0].get_ref().id.span().start), 6);
        assert_eq!(src.line_at(f.node[0].get_ref().score.as_ref().unwrap().span().start), 7);
        assert_eq!(src.line_at(f.node[1].get_ref().id.span().start), 10);
        assert_eq!(f.control.unwrap().get_ref().local, "a");
        assert_eq!(src.error(&f.node[1].get_ref().id, "bad").to_string(), "t.toml:10: bad");
    }

    #[test]
    fn inline_tables_and_dotted_keys_are_toml_too() {
        let src = Source::new("control = { local = \"x\" }\nnode = [{ id = \"a\" }, { id = \"b\", score = 1.0 }]\n", "i.toml");
        let f: File = src.parse().unwrap();
        assert_eq!(f.node.len(), 2);
        let src = Source::new("control.local = \"y\"\n", "d.toml");
        assert_eq!(src.parse::<File>().unwrap().control.unwrap().get_ref().local, "y");
    }

    #[test]
    fn parser_errors_carry_the_line() {
        let err = Source::new("[control]\nlocal = \"a\"\n\n[[node]]\nid = \"a\"\ncolour = 1\n", "e.toml").parse::<File>().unwrap_err().to_string();
        assert!(err.starts_with("e.toml:6: ") && err.contains("colour"), "{err}");
        let err = Source::new("[control]\nlocal = \n", "s.toml").parse::<File>().unwrap_err().to_string();
        assert!(err.starts_with("s.toml:2: "), "{err}");
    }
}
