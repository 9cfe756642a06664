//! A small typed writer of protobuf text format (the `config.pbtxt` of a Triton model), enough
//! for Triton's `ModelConfig`: scalar fields, enum values, repeated numbers, nested messages and
//! repeated messages.
//!
//! Text format reference: protobuf's `text_format` (fields `name: value`, messages
//! `name { ... }`, repeated scalars `name: [ a, b ]`, repeated messages `name [ { ... } ]`).

use std::fmt::Write;

/// One field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string, written quoted with `"` and `\` escaped and non-printable bytes as octal.
    Str(String),
    /// An integer.
    Int(i64),
    /// An enum value by name (`TYPE_FP32`), written bare.
    Enum(&'static str),
    /// Repeated integers: `[ 3, 224, 224 ]`.
    Ints(Vec<i64>),
    /// A nested message.
    Msg(Message),
    /// Repeated messages: `[ { ... }, { ... } ]`.
    Msgs(Vec<Message>),
}

/// A message: fields in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    fields: Vec<(&'static str, Value)>,
}

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends field `name` with `value`.
    pub fn field(mut self, name: &'static str, value: Value) -> Self {
        self.fields.push((name, value));
        self
    }

    /// A string field.
    pub fn str(self, name: &'static str, value: impl Into<String>) -> Self {
        self.field(name, Value::Str(value.into()))
    }

    /// An integer field.
    pub fn int(self, name: &'static str, value: i64) -> Self {
        self.field(name, Value::Int(value))
    }

    /// An enum field.
    pub fn enumv(self, name: &'static str, value: &'static str) -> Self {
        self.field(name, Value::Enum(value))
    }

    /// The message as text format, two spaces per nesting level, ending in a newline.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        for (name, value) in &self.fields {
            match value {
                Value::Str(s) => {
                    let _ = writeln!(out, "{pad}{name}: {}", quote(s));
                }
                Value::Int(i) => {
                    let _ = writeln!(out, "{pad}{name}: {i}");
                }
                Value::Enum(e) => {
                    let _ = writeln!(out, "{pad}{name}: {e}");
                }
                Value::Ints(v) => {
                    let items: Vec<String> = v.iter().map(i64::to_string).collect();
                    let _ = writeln!(out, "{pad}{name}: [ {} ]", items.join(", "));
                }
                Value::Msg(m) => {
                    let _ = writeln!(out, "{pad}{name} {{");
                    m.write(out, depth + 1);
                    let _ = writeln!(out, "{pad}}}");
                }
                Value::Msgs(ms) => {
                    let _ = writeln!(out, "{pad}{name} [");
                    for (i, m) in ms.iter().enumerate() {
                        let _ = writeln!(out, "{pad}  {{");
                        m.write(out, depth + 2);
                        let comma = if i + 1 < ms.len() { "," } else { "" };
                        let _ = writeln!(out, "{pad}  }}{comma}");
                    }
                    let _ = writeln!(out, "{pad}]");
                }
            }
        }
    }
}

/// A text-format string literal: `"`, `\` escaped, bytes outside printable ASCII as `\ooo`.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_and_repeated_fields_in_text_format() {
        let m = Message::new()
            .str("name", "a\"b\\é")
            .int("max_batch_size", 8)
            .field(
                "input",
                Value::Msgs(vec![
                    Message::new()
                        .enumv("data_type", "TYPE_FP32")
                        .field("dims", Value::Ints(vec![3, 224, 224])),
                    Message::new().int("x", -1),
                ]),
            )
            .field("dynamic_batching", Value::Msg(Message::new()));
        assert_eq!(
            m.to_text(),
            "name: \"a\\\"b\\\\\\303\\251\"\nmax_batch_size: 8\ninput [\n  {\n    \
             data_type: TYPE_FP32\n    dims: [ 3, 224, 224 ]\n  },\n  {\n    x: -1\n  }\n]\n\
             dynamic_batching {\n}\n"
        );
    }
}
