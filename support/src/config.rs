//! Every configuration file bpi-os reads is TOML, parsed by one parser (the
//! `toml` crate) into typed structs. Errors read `FILE:LINE: message`, the
//! line taken from the parser's spans; values a loader checks itself are
//! `toml::Spanned` so its errors carry their line too.
//!
//! A large file (the 10k-node Meta-RIB is 7.5 MB) is parsed a top-level table
//! at a time ([`Source::tables`]): the whole document at once costs the
//! parser some 20 times the text in memory, which a small node would have to
//! hold at its peak. The cut points come from the same parser's lexer, so a
//! comment after a header, brackets inside strings or arrays spread over
//! lines do not fool it.

use std::ops::Range;

use anyhow::Result;
use serde::de::DeserializeOwned;
pub use toml::Spanned;

/// A file's text (or a piece of it) and the name its errors carry. Spans of
/// what a piece parses into are relative to the piece; lines are the file's.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    text: &'a str,
    origin: &'a str,
    piece: (usize, usize),
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str, origin: &'a str) -> Self {
        Source { text, origin, piece: (0, text.len()) }
    }

    fn body(&self) -> &'a str {
        &self.text[self.piece.0..self.piece.1]
    }

    /// Parses the file (or this piece) as `T` (unknown keys are the struct's to refuse).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(self.body()).map_err(|e| {
            let line = e.span().map_or(self.line_at(0), |s| self.line_at(s.start));
            anyhow::anyhow!("{}:{line}: {}", self.origin, e.message().trim_end())
        })
    }

    /// The file cut before each top-level table header (`[t]`, `[[t]]`; a
    /// dotted `[t.u]` stays with the table before it): pieces that parse alone
    /// into what the whole file would, table by table.
    pub fn tables(&self) -> Vec<Source<'a>> {
        use toml_parser::lexer::TokenKind;
        let body = self.body();
        let mut cuts = vec![0];
        let (mut depth, mut line_start) = (0usize, true);
        let mut tokens = toml_parser::Source::new(body).lex().peekable();
        while let Some(t) = tokens.next() {
            match t.kind() {
                TokenKind::Newline => line_start = true,
                TokenKind::Whitespace | TokenKind::Comment => {}
                TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                    // A header: runs to the end of its line.
                    let start = t.span().start();
                    let mut dotted = false;
                    while let Some(h) = tokens.next_if(|h| h.kind() != TokenKind::Newline && h.kind() != TokenKind::Eof) {
                        dotted |= h.kind() == TokenKind::Dot;
                        if h.kind() == TokenKind::Comment {
                            break;
                        }
                    }
                    if !dotted && start > 0 {
                        cuts.push(start);
                    }
                    line_start = false;
                }
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                    depth += 1;
                    line_start = false;
                }
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.saturating_sub(1);
                    line_start = false;
                }
                _ => line_start = false,
            }
        }
        cuts.push(body.len());
        let base = self.piece.0;
        cuts.windows(2).map(|w| Source { piece: (base + w[0], base + w[1]), ..*self }).collect()
    }

    /// The 1-based line of the file holding byte `offset` of this piece.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = (self.piece.0 + offset).min(self.text.len());
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
    fn tables_cut_at_headers_only() {
        let text = "a = [\n  [1, 2],\n]\ns = \"[not]\"\n[control] # c\nlocal = \"x\"\n[control.sub]\nk = 1\n[[node]]\nid = \"a\"\n";
        let src = Source::new(text, "t.toml");
        let pieces: Vec<&str> = src.tables().iter().map(|p| p.body()).collect();
        assert_eq!(pieces, ["a = [\n  [1, 2],\n]\ns = \"[not]\"\n", "[control] # c\nlocal = \"x\"\n[control.sub]\nk = 1\n", "[[node]]\nid = \"a\"\n"]);
        // Lines stay the file's: the node's id is on line 10.
        let f: File = src.tables()[2].parse().unwrap();
        assert_eq!(src.tables()[2].line_at(f.node[0].get_ref().id.span().start), 10);
        let err = src.tables()[2].parse::<Control>().unwrap_err().to_string();
        assert!(err.starts_with("t.toml:9:"), "{err}");
    }

    #[test]
    fn parser_errors_carry_the_line() {
        let err = Source::new("[control]\nlocal = \"a\"\n\n[[node]]\nid = \"a\"\ncolour = 1\n", "e.toml").parse::<File>().unwrap_err().to_string();
        assert!(err.starts_with("e.toml:6: ") && err.contains("colour"), "{err}");
        let err = Source::new("[control]\nlocal = \n", "s.toml").parse::<File>().unwrap_err().to_string();
        assert!(err.starts_with("s.toml:2: "), "{err}");
    }
}
