//! Quoting for the languages a bundle is written in (TOML, POSIX sh).

/// IoT Edge requires device hostnames shorter than 64 characters.
pub(crate) const MAX_DEVICE_HOSTNAME: usize = 63;

/// A TOML basic string holding `value`, escaped.
pub(crate) fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A single-quoted POSIX shell word holding `value` literally.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// `value` as one shell word: bare when it holds only characters the shell takes literally,
/// single-quoted otherwise. For commands shown to people.
pub(crate) fn shell_word(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'));
    if bare {
        value.to_string()
    } else {
        shell_quote(value)
    }
}

/// `value` with control characters replaced, for one-line comments.
pub(crate) fn comment_text(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `text` with exactly one trailing newline.
pub(crate) fn with_trailing_newline(text: &str) -> String {
    let mut out = text.trim_end().to_string();
    out.push('\n');
    out
}

/// An FQDN, host name or IP address of at most `max` characters, in the characters `install.sh`
/// also accepts (letters, digits, `.`, `-`, `:`), so the same value passes everywhere.
pub(crate) fn is_hostname(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_round_trip() {
        for value in [
            "plain",
            "a\"b",
            "back\\slash",
            "new\nline",
            "tab\t",
            "bell\u{7}",
            "$upstream:443/x",
        ] {
            let doc = format!("v = {}", toml_string(value));
            let parsed: toml::Table = doc.parse().unwrap();
            assert_eq!(parsed["v"].as_str(), Some(value), "{doc}");
        }
    }

    #[test]
    fn shell_quoting_keeps_quotes_and_dollars_literal() {
        assert_eq!(shell_quote("top-layer"), "'top-layer'");
        assert_eq!(shell_quote("it's$x"), "'it'\\''s$x'");
        assert_eq!(shell_word("top-layer"), "top-layer");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn hostnames() {
        assert!(is_hostname("10.0.0.4", MAX_DEVICE_HOSTNAME));
        assert!(is_hostname("fe80::1", MAX_DEVICE_HOSTNAME));
        assert!(is_hostname("gw.factory.example.com", MAX_DEVICE_HOSTNAME));
        assert!(!is_hostname("", MAX_DEVICE_HOSTNAME));
        assert!(!is_hostname("a b", MAX_DEVICE_HOSTNAME));
        assert!(!is_hostname("a/b", MAX_DEVICE_HOSTNAME));
        assert!(!is_hostname("a&b", MAX_DEVICE_HOSTNAME));
        assert!(!is_hostname(&"a".repeat(64), MAX_DEVICE_HOSTNAME));
        assert!(is_hostname(&"a".repeat(63), MAX_DEVICE_HOSTNAME));
    }
}
