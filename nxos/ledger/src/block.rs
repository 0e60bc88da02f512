//! A ledger block and its canonical encoding: the exact bytes that are hashed
//! and stored, documented in docs/ledger.md so that any tool can re-verify a
//! block without this code.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::LedgerError;

/// Domain tag that starts every encoded block, so a block hash can never be
/// confused with a hash of anything else.
pub const TAG: &[u8] = b"BPI-LEDGER-BLOCK-V1";

/// The largest `data` accepted, in bytes of canonical JSON.
pub const MAX_DATA: usize = 64 * 1024;
/// The largest producer, category, action, user or hostname, in bytes.
pub const MAX_FIELD: usize = 255;

pub type Hash = [u8; 32];

/// What a caller asks to record; the ledger adds height, hash and prev_hash.
/// On D-Bus inside `BlockView` (crate::wire).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, zbus::zvariant::Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct Draft {
    pub timestamp: u64,
    pub producer: String,
    pub category: String,
    pub action: String,
    pub user: String,
    pub hostname: String,
    pub pid: u32,
    /// Canonical JSON text (see [`canonical_json`]); hashed byte for byte.
    pub data: String,
}

/// One recorded operation (seed 000, section 9.1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub height: u64,
    pub hash: Hash,
    /// `None` for the first block (height 1), which has no predecessor.
    pub prev_hash: Option<Hash>,
    pub draft: Draft,
}

/// Parses `text` as JSON and renders it canonically: object keys sorted,
/// no insignificant whitespace. The result is what the block hash covers.
/// What would not survive that exactly is refused rather than changed: a key
/// given twice in one object, and an integer outside 64 bits (it would become
/// a float). Numbers with a fraction or an exponent are IEEE-754 doubles.
pub fn canonical_json(text: &str) -> Result<String, LedgerError> {
    canonical_value(&parse_data(text)?)
}

/// Parses a record's data as [`canonical_json`] does, refusing duplicate keys
/// and integers past 64 bits.
pub fn parse_data(text: &str) -> Result<serde_json::Value, LedgerError> {
    let Strict(value) = serde_json::from_str(text).map_err(|e| LedgerError::BadData(format!("data is not valid JSON: {e}")))?;
    if let Some(n) = oversized_integer(text) {
        return Err(LedgerError::BadData(format!("data holds the integer {n}, outside 64 bits; write it as a string")));
    }
    Ok(value)
}

/// A JSON value parsed with duplicate keys refused.
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} is given twice in one object")));
            }
            out.insert(key, v);
        }
        Ok(out.into())
    }
}

/// The first integer literal in valid JSON `text` that fits neither i64 nor
/// u64 (serde_json would read it as a float, silently rounded).
fn oversized_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                i += 1;
            }
            let n = &text[start..i];
            let integer = !n.contains(['.', 'e', 'E']);
            if integer && n.parse::<i64>().is_err() && n.parse::<u64>().is_err() {
                return Some(n);
            }
            continue;
        }
        i += 1;
    }
    None
}

/// As [`canonical_json`], for a parsed value (serde_json keeps maps sorted).
pub fn canonical_value(value: &serde_json::Value) -> Result<String, LedgerError> {
    if !value.is_object() {
        return Err(LedgerError::BadData("data must be a JSON object".into()));
    }
    let text = serde_json::to_string(value).expect("a JSON value always serialises");
    if text.len() > MAX_DATA {
        return Err(LedgerError::BadData(format!(
            "data is {} bytes as canonical JSON; the limit is {MAX_DATA}",
            text.len()
        )));
    }
    Ok(text)
}

impl Draft {
    /// Checks the limits of docs/ledger.md; the plugins check the data's shape.
    pub fn check(&self) -> Result<(), LedgerError> {
        for (name, v) in [
            ("producer", &self.producer),
            ("category", &self.category),
            ("action", &self.action),
            ("user", &self.user),
            ("hostname", &self.hostname),
        ] {
            if v.len() > MAX_FIELD {
                return Err(LedgerError::BadData(format!("{name} is {} bytes; the limit is {MAX_FIELD}", v.len())));
            }
        }
        for (name, v) in [("category", &self.category), ("action", &self.action)] {
            let ok = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !ok {
                return Err(LedgerError::BadData(format!("{name} {v:?} must be non-empty lower-case [a-z0-9_-]")));
            }
        }
        if self.data.len() > MAX_DATA {
            return Err(LedgerError::BadData(format!("data is {} bytes; the limit is {MAX_DATA}", self.data.len())));
        }
        Ok(())
    }
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical encoding of a block's content (docs/ledger.md, "Encoding").
pub fn encode(height: u64, prev_hash: Option<&Hash>, d: &Draft, out: &mut Vec<u8>) {
    out.extend_from_slice(TAG);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&d.timestamp.to_be_bytes());
    put_field(out, prev_hash.map(|h| &h[..]).unwrap_or(&[]));
    put_field(out, d.producer.as_bytes());
    put_field(out, d.category.as_bytes());
    put_field(out, d.action.as_bytes());
    put_field(out, d.user.as_bytes());
    put_field(out, d.hostname.as_bytes());
    out.extend_from_slice(&d.pid.to_be_bytes());
    put_field(out, d.data.as_bytes());
}

pub fn block_hash(encoded: &[u8]) -> Hash {
    Sha256::digest(encoded).into()
}

/// A block's encoding split into its fields, borrowed: checking a whole log
/// walks every block without allocating.
pub struct Raw<'a> {
    pub height: u64,
    pub timestamp: u64,
    pub prev_hash: Option<Hash>,
    pub producer: &'a str,
    pub category: &'a str,
    pub action: &'a str,
    pub user: &'a str,
    pub hostname: &'a str,
    pub pid: u32,
    pub data: &'a str,
}

/// Splits the canonical encoding into fields; `Err` says which is malformed.
pub fn walk(bytes: &[u8]) -> Result<Raw<'_>, String> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.take(TAG.len())? != TAG {
        return Err("does not start with the block tag".into());
    }
    let height = r.u64()?;
    let timestamp = r.u64()?;
    let prev = r.field()?;
    let prev_hash = match prev.len() {
        0 => None,
        32 => Some(prev.try_into().expect("32 bytes")),
        n => return Err(format!("prev_hash is {n} bytes")),
    };
    let producer = r.text("producer")?;
    let category = r.text("category")?;
    let action = r.text("action")?;
    let user = r.text("user")?;
    let hostname = r.text("hostname")?;
    let pid = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes"));
    let data = r.text("data")?;
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the last field", bytes.len() - r.at));
    }
    Ok(Raw { height, timestamp, prev_hash, producer, category, action, user, hostname, pid, data })
}

/// Reads the canonical encoding back into an owned draft.
pub fn decode(bytes: &[u8]) -> Result<(u64, Option<Hash>, Draft), String> {
    let r = walk(bytes)?;
    let draft = Draft {
        timestamp: r.timestamp,
        producer: r.producer.into(),
        category: r.category.into(),
        action: r.action.into(),
        user: r.user.into(),
        hostname: r.hostname.into(),
        pid: r.pid,
        data: r.data.into(),
    };
    Ok((r.height, r.prev_hash, draft))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("ends inside a field")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn field(&mut self) -> Result<&'a [u8], String> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(n)
    }
    fn text(&mut self, name: &str) -> Result<&'a str, String> {
        let f = self.field()?;
        std::str::from_utf8(f).map_err(|_| format!("{name} is not UTF-8"))
    }
}

/// The JSON form of a block (seed 000, section 9.1.1), as `show` and D-Bus give it.
#[derive(Serialize)]
pub struct BlockJson<'a> {
    pub height: u64,
    pub timestamp: u64,
    pub hash: String,
    pub prev_hash: String,
    pub producer: &'a str,
    pub category: &'a str,
    pub action: &'a str,
    pub user: &'a str,
    pub hostname: &'a str,
    pub pid: u32,
    pub data: &'a serde_json::value::RawValue,
}

impl Block {
    pub fn to_json(&self) -> serde_json::Value {
        let d = &self.draft;
        let raw: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(d.data.clone()).unwrap_or_else(|_| {
                serde_json::value::to_raw_value(&d.data).expect("a string serialises")
            });
        let j = BlockJson {
            height: self.height,
            timestamp: d.timestamp,
            hash: hex::encode(self.hash),
            prev_hash: self.prev_hash.map(hex::encode).unwrap_or_default(),
            producer: &d.producer,
            category: &d.category,
            action: &d.action,
            user: &d.user,
            hostname: &d.hostname,
            pid: d.pid,
            data: &raw,
        };
        serde_json::to_value(j).expect("a block serialises")
    }
}

#[cfg(test)]
pub(crate) fn draft(category: &str, data: &str) -> Draft {
    Draft {
        timestamp: 1_705_312_200,
        producer: "network-plugin".into(),
        category: category.into(),
        action: "created".into(),
        user: "admin".into(),
        hostname: "proxve-01".into(),
        pid: 12345,
        data: canonical_json(data).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_refuses_what_it_could_not_keep_exactly() {
        assert_eq!(canonical_json(r#"{"b":1,"a":[2,{"d":-3,"c":4.5}]}"#).unwrap(), r#"{"a":[2,{"c":4.5,"d":-3}],"b":1}"#);
        assert_eq!(canonical_json(r#"{"max":18446744073709551615,"min":-9223372036854775808}"#).unwrap(), r#"{"max":18446744073709551615,"min":-9223372036854775808}"#);
        let twice = canonical_json(r#"{"a":1,"b":{"x":1,"x":2}}"#).unwrap_err().to_string();
        assert!(twice.contains("\"x\" is given twice"), "{twice}");
        let big = canonical_json(r#"{"n":18446744073709551616}"#).unwrap_err().to_string();
        assert!(big.contains("18446744073709551616") && big.contains("64 bits"), "{big}");
        let small = canonical_json(r#"{"n":-9223372036854775809}"#).unwrap_err().to_string();
        assert!(small.contains("64 bits"), "{small}");
        // Digits inside strings are text, escaped quotes included.
        assert!(canonical_json(r#"{"s":"99999999999999999999 \" 99999999999999999999"}"#).is_ok());
        assert!(canonical_json(r#"{"f":1e300,"g":0.1}"#).is_ok());
    }

    /// Found by the ledger_data fuzz target: without correctly rounded float
    /// parsing (serde_json's float_roundtrip), the canonical form of this
    /// number was not its own canonical form, so a verifier that
    /// re-canonicalised would disagree with the stored bytes.
    #[test]
    fn the_canonical_form_is_a_fixed_point_for_floats() {
        for text in [r#"{"big":18.6674407370955161}"#, r#"{"x":0.30000000000000004,"y":1e-7,"z":123456.789e-3}"#] {
            let once = canonical_json(text).unwrap();
            assert_eq!(canonical_json(&once).unwrap(), once, "{text}");
        }
    }

    #[test]
    fn encoding_round_trips_and_hash_covers_every_field() {
        let d = draft("bridge", r#"{"uplink_interface":"enp2s0","bridge_name":"ovsbr0"}"#);
        assert_eq!(d.data, r#"{"bridge_name":"ovsbr0","uplink_interface":"enp2s0"}"#);
        let prev = [7u8; 32];
        let mut enc = Vec::new();
        encode(156, Some(&prev), &d, &mut enc);
        assert_eq!(decode(&enc).unwrap(), (156, Some(prev), d.clone()));
        let h = block_hash(&enc);
        // Changing any one field changes the hash.
        type Mutation = Box<dyn Fn(&mut Draft)>;
        let variants: Vec<Mutation> = vec![
            Box::new(|d| d.timestamp += 1),
            Box::new(|d| d.producer.push('x')),
            Box::new(|d| d.category.push('x')),
            Box::new(|d| d.action.push('x')),
            Box::new(|d| d.user.push('x')),
            Box::new(|d| d.hostname.push('x')),
            Box::new(|d| d.pid += 1),
            Box::new(|d| d.data = "{}".into()),
        ];
        for f in variants {
            let mut d2 = d.clone();
            f(&mut d2);
            let mut e2 = Vec::new();
            encode(156, Some(&prev), &d2, &mut e2);
            assert_ne!(block_hash(&e2), h);
        }
        let mut e3 = Vec::new();
        encode(157, Some(&prev), &d, &mut e3);
        assert_ne!(block_hash(&e3), h);
        let mut e4 = Vec::new();
        encode(156, None, &d, &mut e4);
        assert_ne!(block_hash(&e4), h);
    }

    #[test]
    fn decode_names_malformed_input() {
        let d = draft("bridge", r#"{"bridge_name":"b"}"#);
        let mut enc = Vec::new();
        encode(1, None, &d, &mut enc);
        assert!(decode(&enc[..enc.len() - 1]).unwrap_err().contains("ends inside"));
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode(&extra).unwrap_err().contains("after the last field"));
        assert!(decode(b"nope").is_err());
    }

    #[test]
    fn limits_and_shapes_are_enforced() {
        assert!(canonical_json("[1,2]").is_err());
        assert!(canonical_json("{bad").is_err());
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_DATA));
        assert!(canonical_json(&big).unwrap_err().to_string().contains("limit"));
        let mut d = draft("bridge", "{}");
        d.category = "Bad Category".into();
        assert!(d.check().is_err());
        d.category = "bridge".into();
        d.hostname = "h".repeat(MAX_FIELD + 1);
        assert!(d.check().is_err());
    }
}
