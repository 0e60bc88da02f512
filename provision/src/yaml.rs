//! YAML read into a small tree that remembers the line of every key and
//! value, so a refusal can say file:line. Anchors and aliases (which
//! cloud-init documents do not use) are refused rather than expanded.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    /// A scalar; `plain` when it was unquoted (so `true`, `null`, `1` are
    /// not strings); `literal` for a `|` block, whose lines are the file's.
    Scalar { text: String, plain: bool, literal: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true, .. } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A scalar as text (numbers and booleans too, as written).
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// YAML 1.1 booleans as cloud-init reads them (Proxmox writes `False`).
    pub fn boolean(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, plain: true, .. } => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Some(true),
                "false" | "no" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A `|` block: line N of its text is line `self.line + N - 1` of the file.
    pub fn is_literal(&self) -> bool {
        matches!(&self.value, Value::Scalar { literal: true, .. })
    }

    pub fn map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Map(_) => "a mapping",
            Value::Seq(_) => "a list",
            Value::Scalar { .. } if self.is_null() => "empty",
            Value::Scalar { .. } => "a scalar",
        }
    }
}

/// A parse failure: line (1-based) and what the parser said.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses one YAML document; an empty text is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder { stack: Vec::new(), root: None, error: None, documents: 0 };
    let mut p = Parser::new_from_str(text);
    p.load(&mut b, true).map_err(|e| SyntaxError { line: e.marker().line(), message: e.info().to_string() })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    if b.documents > 1 {
        return Err(SyntaxError { line: 1, message: "more than one YAML document in the file".into() });
    }
    Ok(b.root.unwrap_or(Node { line: 1, value: Value::Map(Vec::new()) }))
}

enum Open {
    Map { line: usize, entries: Vec<(String, Node)>, key: Option<(String, usize)> },
    Seq { line: usize, items: Vec<Node> },
}

struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    error: Option<SyntaxError>,
    documents: usize,
}

impl Builder {
    fn fail(&mut self, line: usize, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { line, message });
        }
    }

    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => {
                    let line = node.line;
                    match node.value {
                        Value::Scalar { text, .. } => {
                            if entries.iter().any(|(k, _)| *k == text) {
                                self.fail(line, format!("key {text:?} appears twice"));
                            } else {
                                *key = Some((text, line));
                            }
                        }
                        _ => self.fail(line, "a mapping key must be a scalar".into()),
                    }
                }
                Some((k, _)) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Alias(_) => self.fail(line, "YAML aliases are not supported".into()),
            Event::Scalar(text, style, anchor, _) => {
                if anchor != 0 {
                    self.fail(line, "YAML anchors are not supported".into());
                }
                self.push(Node { line, value: Value::Scalar { text, plain: style == TScalarStyle::Plain, literal: style == TScalarStyle::Literal } });
            }
            Event::SequenceStart(anchor, _) => {
                if anchor != 0 {
                    self.fail(line, "YAML anchors are not supported".into());
                }
                self.stack.push(Open::Seq { line, items: Vec::new() });
            }
            Event::MappingStart(anchor, _) => {
                if anchor != 0 {
                    self.fail(line, "YAML anchors are not supported".into());
                }
                self.stack.push(Open::Map { line, entries: Vec::new(), key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq { line, items }) => Node { line, value: Value::Seq(items) },
                    Some(Open::Map { line, entries, .. }) => Node { line, value: Value::Map(entries) },
                    None => return,
                };
                self.push(node);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_for_keys_and_values() {
        let n = parse("#cloud-config\nhostname: node1\nssh_authorized_keys:\n  - ssh-ed25519 AAAA x\nchpasswd:\n  expire: False\n").unwrap();
        assert_eq!(n.get("hostname").unwrap().line, 2);
        assert_eq!(n.get("hostname").unwrap().text(), Some("node1"));
        let keys = n.get("ssh_authorized_keys").unwrap().seq().unwrap();
        assert_eq!(keys[0].line, 4);
        assert_eq!(n.get("chpasswd").unwrap().get("expire").unwrap().boolean(), Some(false));
    }

    #[test]
    fn quoted_scalars_are_strings_and_plain_null_is_null() {
        let n = parse("a: 'true'\nb: true\nc:\nd: ~\n").unwrap();
        assert_eq!(n.get("a").unwrap().boolean(), None);
        assert_eq!(n.get("b").unwrap().boolean(), Some(true));
        assert!(n.get("c").unwrap().is_null() && n.get("d").unwrap().is_null());
    }

    #[test]
    fn malformed_yaml_and_duplicates_and_aliases_say_where() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("twice"));
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(parse("").unwrap().map().unwrap().is_empty());
    }
}
