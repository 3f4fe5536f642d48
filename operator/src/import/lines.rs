//! Finding the line of a field in the config text, for messages that point at it.
//!
//! serde_yaml reports the line of a syntax or type error itself; semantic errors (a duplicate
//! `device_id`, a deployment file that does not exist) and unknown keys are found after
//! deserialization, when positions are gone. Both formats are nearly always written in block
//! style, so [`Lines`] maps every key of block-style YAML to its line by path
//! (`edgedevices.child[0].device_id`), following indentation and `- ` items. For flow style and
//! JSON (the az format may be JSON) it falls back to searching for the key and its value.

use std::collections::HashMap;

/// Lines of the keys of one config text.
pub(crate) struct Lines<'a> {
    text: Vec<&'a str>,
    /// Line (1-based) of each key path of block-style YAML, first occurrence.
    by_path: HashMap<String, usize>,
}

#[derive(Debug)]
enum Frame {
    Key { col: usize, key: String },
    Item { col: usize, index: usize },
}

impl Frame {
    fn col(&self) -> usize {
        match self {
            Frame::Key { col, .. } | Frame::Item { col, .. } => *col,
        }
    }
}

fn path_of(stack: &[Frame]) -> String {
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Key { key, .. } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Frame::Item { index, .. } => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// A mapping key at the start of `rest`: plain or quoted, followed by `:` and a space or the end
/// of the line. Returns the key and what follows the colon.
fn leading_key(rest: &str) -> Option<(String, &str)> {
    let (key, after) = match rest.chars().next()? {
        q @ ('"' | '\'') => {
            let end = rest[1..].find(q)? + 1;
            (rest[1..end].to_string(), &rest[end + 1..])
        }
        _ => {
            let colon = rest
                .find(": ")
                .or_else(|| rest.ends_with(':').then(|| rest.len() - 1))?;
            let key = &rest[..colon];
            if key.is_empty() || key.contains(['{', '[', '#']) || key.starts_with("- ") {
                return None;
            }
            (key.trim_end().to_string(), &rest[colon..])
        }
    };
    let after = after.trim_start_matches(' ');
    let value = after.strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, value.trim()))
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut by_path = HashMap::new();
        let trimmed = text.trim_start();
        if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
            index_block(&lines, &mut by_path);
        }
        Lines {
            text: lines,
            by_path,
        }
    }

    /// Line of a field by its path (`edgedevices.child[0].deployment`). Falls back to the
    /// `occurrence`-th line (0-based) where the path's last key is written with `value`, or
    /// with any value when `value` is `None`.
    pub(crate) fn line(&self, path: &str, value: Option<&str>, occurrence: usize) -> Option<usize> {
        if let Some(line) = self.by_path.get(path) {
            return Some(*line);
        }
        let key = last_key(path)?;
        self.find(key, value).get(occurrence).copied()
    }

    /// 1-based lines where `key` is written as a mapping key (block, flow or JSON), with `value`
    /// when given; a line appears once per time it writes the key.
    pub(crate) fn find(&self, key: &str, value: Option<&str>) -> Vec<usize> {
        let mut out = Vec::new();
        for (n, line) in self.text.iter().enumerate() {
            for _ in 0..keys_on_line(line, key, value) {
                out.push(n + 1);
            }
        }
        out
    }
}

/// The last mapping key of a path: `a.b[2]` → `b`, `a.b.c` → `c`.
fn last_key(path: &str) -> Option<&str> {
    let path = path.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[');
    path.rsplit('.').next().filter(|k| !k.is_empty())
}

fn index_block(lines: &[&str], by_path: &mut HashMap<String, usize>) {
    let mut stack: Vec<Frame> = Vec::new();
    // Inside a block scalar (`|`, `>`): lines indented deeper than this belong to it.
    let mut scalar_above: Option<usize> = None;
    for (n, raw) in lines.iter().enumerate() {
        let content = raw.trim_start_matches(' ');
        let mut col = raw.len() - content.len();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if let Some(limit) = scalar_above {
            if col > limit {
                continue;
            }
            scalar_above = None;
        }
        if content.starts_with("---") || content.starts_with("...") {
            stack.clear();
            continue;
        }
        let mut rest = content;
        while rest == "-" || rest.starts_with("- ") {
            while stack.last().is_some_and(|f| f.col() > col) {
                stack.pop();
            }
            let index = match stack.last() {
                Some(Frame::Item { col: c, index }) if *c == col => {
                    let next = index + 1;
                    stack.pop();
                    next
                }
                _ => 0,
            };
            stack.push(Frame::Item { col, index });
            let after = rest[1..].trim_start_matches(' ');
            col += rest.len() - after.len();
            rest = after;
        }
        let Some((key, value)) = leading_key(rest) else {
            continue;
        };
        while stack.last().is_some_and(|f| f.col() >= col) {
            stack.pop();
        }
        stack.push(Frame::Key { col, key });
        by_path.entry(path_of(&stack)).or_insert(n + 1);
        let value = value.split(" #").next().unwrap_or("").trim();
        if value.starts_with('|') || value.starts_with('>') {
            scalar_above = Some(col);
        }
    }
}

/// Whether `line` writes `key` as a mapping key (optionally quoted), with `value` when given.
#[cfg(test)]
fn key_on_line(line: &str, key: &str, value: Option<&str>) -> bool {
    keys_on_line(line, key, value) > 0
}

/// How often `line` writes `key` as a mapping key (optionally quoted), with `value` when given.
fn keys_on_line(line: &str, key: &str, value: Option<&str>) -> usize {
    let mut count = 0;
    let mut from = 0;
    while let Some(found) = line[from..].find(key) {
        let start = from + found;
        let end = start + key.len();
        from = start + 1;
        let before = line[..start].chars().next_back();
        let (quoted, before_quote) = match before {
            Some(q @ ('"' | '\'')) => (Some(q), line[..start - 1].chars().next_back()),
            _ => (None, before),
        };
        if !before_quote.is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-')) {
            continue;
        }
        let mut after = &line[end..];
        if let Some(q) = quoted {
            match after.strip_prefix(q) {
                Some(a) => after = a,
                None => continue,
            }
        }
        let after = after.trim_start();
        let Some(rest) = after.strip_prefix(':') else {
            continue;
        };
        if quoted.is_none() && !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            continue;
        }
        match value {
            Some(v) if scalar_value(rest) != v => {}
            _ => count += 1,
        }
    }
    count
}

/// The scalar written after a key's colon: quoted, or plain up to a comment, `,` or `}`.
fn scalar_value(rest: &str) -> &str {
    let rest = rest.trim_start();
    match rest.chars().next() {
        Some(q @ ('"' | '\'')) => match rest[1..].find(q) {
            Some(end) => &rest[1..=end],
            None => &rest[1..],
        },
        _ => {
            let end = [rest.find(" #"), rest.find(','), rest.find('}')]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(rest.len());
            rest[..end].trim()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key # comment
edgedevices:
  device_id: top
  child:
    - device_id: a
      deployment: ./a.json
    - device_id: b
      child:
      - device_id: c
        hostname: 'c.local'
  note: |
    device_id: not-a-key
  after: 1
";

    #[test]
    fn block_paths_follow_indentation_and_items() {
        let lines = Lines::new(TOOL);
        let at = |p: &str| lines.line(p, None, 0);
        assert_eq!(at("config_version"), Some(1));
        assert_eq!(at("iothub.authentication_method"), Some(3));
        assert_eq!(at("edgedevices.device_id"), Some(5));
        assert_eq!(at("edgedevices.child[0].device_id"), Some(7));
        assert_eq!(at("edgedevices.child[0].deployment"), Some(8));
        assert_eq!(at("edgedevices.child[1].child[0].device_id"), Some(11));
        assert_eq!(at("edgedevices.child[1].child[0].hostname"), Some(12));
        assert_eq!(at("edgedevices.after"), Some(15));
    }

    #[test]
    fn json_falls_back_to_key_and_value() {
        let json = "{\n  \"edgeDevices\": [\n    {\"deviceId\": \"a\"},\n    {\"deviceId\": \"b\", \"deployment\": \"x.json\"}\n  ]\n}\n";
        let lines = Lines::new(json);
        assert_eq!(lines.line("edgeDevices[1].deviceId", Some("b"), 0), Some(4));
        assert_eq!(
            lines.line("edgeDevices[1].deployment", Some("x.json"), 0),
            Some(4)
        );
        assert_eq!(lines.find("deviceId", None), vec![3, 4]);
        let one_line = Lines::new(
            "{\"edgeDevices\": [{\"deviceId\": \"a\", \"children\": [{\"deviceId\": \"a\"}]}]}",
        );
        assert_eq!(
            one_line.line("edgeDevices[0].children[0].deviceId", Some("a"), 1),
            Some(1)
        );
    }

    #[test]
    fn values_are_read_plain_or_quoted() {
        assert!(key_on_line("  - device_id: a # x", "device_id", Some("a")));
        assert!(key_on_line(
            "  hostname: 'c.local'",
            "hostname",
            Some("c.local")
        ));
        assert!(!key_on_line("  my_device_id: a", "device_id", None));
        assert!(!key_on_line("  device_id_x: a", "device_id", None));
        assert!(!key_on_line("  url: http://x", "http", None));
    }
}
