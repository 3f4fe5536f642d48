//! Tokenizer for the IoT Hub query language.
//!
//! Positions are character offsets (not byte offsets) so that an error position can be shown
//! to a user under the query text they typed, whatever characters it contains.

use super::{Literals, QueryError};

/// One lexical token with the character offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub position: usize,
}

/// The kinds of token the language has. Keywords are plain `Word`s: whether a word is a keyword
/// depends on where it stands (after a `.` it is always a property name), so the parser decides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// A bare name: keyword, function name or property name (letters, digits, `_`, `$`; not
    /// starting with a digit).
    Word(String),
    /// A property name written `[[any text]]`, for ids with characters a bare name cannot hold
    /// (IoT Hub's own system-metric queries use `configurations.[[<id>]].status`).
    BracketedName(String),
    /// A string literal in single or double quotes, escapes already resolved.
    Str(String),
    /// A numeric literal (decimal, with optional fraction and exponent, or `0x` hexadecimal).
    Number(serde_json::Number),
    Star,
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    /// `!=` or `<>`.
    NotEq,
    Lt,
    Gt,
    LtEq,
    GtEq,
    Plus,
    Minus,
    Slash,
    Percent,
    Eof,
}

impl TokenKind {
    /// How the token is shown in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Word(w) => format!("'{w}'"),
            TokenKind::BracketedName(n) => format!("'[[{n}]]'"),
            TokenKind::Str(s) => format!("string '{s}'"),
            TokenKind::Number(n) => format!("number {n}"),
            TokenKind::Star => "'*'".into(),
            TokenKind::Comma => "','".into(),
            TokenKind::Dot => "'.'".into(),
            TokenKind::LParen => "'('".into(),
            TokenKind::RParen => "')'".into(),
            TokenKind::LBracket => "'['".into(),
            TokenKind::RBracket => "']'".into(),
            TokenKind::Eq => "'='".into(),
            TokenKind::NotEq => "'!='".into(),
            TokenKind::Lt => "'<'".into(),
            TokenKind::Gt => "'>'".into(),
            TokenKind::LtEq => "'<='".into(),
            TokenKind::GtEq => "'>='".into(),
            TokenKind::Plus => "'+'".into(),
            TokenKind::Minus => "'-'".into(),
            TokenKind::Slash => "'/'".into(),
            TokenKind::Percent => "'%'".into(),
            TokenKind::Eof => "end of query".into(),
        }
    }
}

/// Twin keys are UTF-8, so names may hold any letter, not only ASCII ones.
fn is_name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Splits `input` into tokens with the lenient literal rules (see [`tokenize_with`]).
#[cfg(test)]
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    tokenize_with(input, Literals::Lenient)
}

/// Splits `input` into tokens, ending with one `Eof` token positioned at the end of the input.
/// `literals` decides which quotes and escapes a string literal may use.
pub(crate) fn tokenize_with(input: &str, literals: Literals) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = |kind: TokenKind| Token {
            kind,
            position: start,
        };
        let next = chars.get(i + 1).copied();
        let kind = match c {
            '*' => TokenKind::Star,
            ',' => TokenKind::Comma,
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ']' => TokenKind::RBracket,
            '=' => TokenKind::Eq,
            '+' => TokenKind::Plus,
            '-' => TokenKind::Minus,
            '/' => TokenKind::Slash,
            '%' => TokenKind::Percent,
            '.' if !next.is_some_and(|n| n.is_ascii_digit()) => TokenKind::Dot,
            '!' if next == Some('=') => {
                i += 2;
                tokens.push(single(TokenKind::NotEq));
                continue;
            }
            '<' => {
                let (kind, len) = match next {
                    Some('=') => (TokenKind::LtEq, 2),
                    Some('>') => (TokenKind::NotEq, 2),
                    _ => (TokenKind::Lt, 1),
                };
                i += len;
                tokens.push(single(kind));
                continue;
            }
            '>' => {
                let (kind, len) = match next {
                    Some('=') => (TokenKind::GtEq, 2),
                    _ => (TokenKind::Gt, 1),
                };
                i += len;
                tokens.push(single(kind));
                continue;
            }
            '[' if next == Some('[') => {
                let (name, end) = lex_bracketed_name(&chars, i, literals)?;
                i = end;
                tokens.push(single(TokenKind::BracketedName(name)));
                continue;
            }
            '[' => TokenKind::LBracket,
            '\'' | '"' => {
                let (text, end) = lex_string(&chars, i, literals)?;
                i = end;
                tokens.push(single(TokenKind::Str(text)));
                continue;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let (number, end) = lex_number(&chars, i)?;
                i = end;
                tokens.push(single(TokenKind::Number(number)));
                continue;
            }
            c if is_name_start(c) => {
                let mut end = i;
                while end < chars.len() && is_name_char(chars[end]) {
                    end += 1;
                }
                let word: String = chars[i..end].iter().collect();
                i = end;
                tokens.push(single(TokenKind::Word(word)));
                continue;
            }
            other => {
                return Err(QueryError::new(
                    start,
                    format!(
                        "unexpected character '{other}'; property names with special characters \
                         are written [[name]] and text values are quoted"
                    ),
                ));
            }
        };
        tokens.push(single(kind));
        i += 1;
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        position: chars.len(),
    });
    Ok(tokens)
}

/// Lexes `[[name]]` starting at `start` (the first `[`); returns the name and the index after `]]`.
fn lex_bracketed_name(
    chars: &[char],
    start: usize,
    literals: Literals,
) -> Result<(String, usize), QueryError> {
    let mut i = start + 2;
    let mut name = String::new();
    while i < chars.len() {
        if literals == Literals::TargetCondition && chars[i] == '"' {
            return Err(no_double_quotes(i));
        }
        if chars[i] == ']' && chars.get(i + 1) == Some(&']') {
            if name.is_empty() {
                return Err(QueryError::new(start, "empty property name '[[]]'"));
            }
            return Ok((name, i + 2));
        }
        name.push(chars[i]);
        i += 1;
    }
    Err(QueryError::new(
        start,
        "property name opened with '[[' is not closed with ']]'",
    ))
}

/// A target condition holds no double quote anywhere (Learn, "Understand IoT Edge automatic
/// deployments").
fn no_double_quotes(position: usize) -> QueryError {
    QueryError::literal_rule(
        position,
        "double quotes are not allowed in a target condition; quote values with single quotes",
    )
}

/// Lexes a quoted string starting at `start` (the opening quote). A doubled quote (`'it''s'`)
/// stands for one quote in every mode. Backslash escapes depend on `literals`:
/// * `Lenient`: `\'`, `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX`;
/// * `Query`: only the four IoT Hub's query language reference lists: `\'`, `\"`, `\\`,
///   `\uXXXX`;
/// * `TargetCondition`: none (a backslash is not a value character), and no double quotes.
fn lex_string(
    chars: &[char],
    start: usize,
    literals: Literals,
) -> Result<(String, usize), QueryError> {
    let quote = chars[start];
    if literals == Literals::TargetCondition && quote == '"' {
        return Err(no_double_quotes(start));
    }
    let mut i = start + 1;
    let mut text = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == quote {
            if chars.get(i + 1) == Some(&quote) {
                text.push(quote);
                i += 2;
                continue;
            }
            return Ok((text, i + 1));
        }
        if c == '"' && literals == Literals::TargetCondition {
            return Err(no_double_quotes(i));
        }
        if c == '\\' {
            if literals == Literals::TargetCondition {
                return Err(QueryError::literal_rule(
                    i,
                    "a backslash is not allowed in a target condition value; write a quote inside a value as two quotes ('')",
                ));
            }
            let escaped = chars.get(i + 1).copied().ok_or_else(|| {
                QueryError::new(i, "string ends with a lone backslash; write \\\\ for one")
            })?;
            let lenient_only = match escaped {
                '/' => Some('/'),
                'b' => Some('\u{8}'),
                'f' => Some('\u{c}'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                't' => Some('\t'),
                _ => None,
            };
            let resolved = match escaped {
                '\'' | '"' | '\\' => escaped,
                'u' => {
                    let hex: String = chars.iter().skip(i + 2).take(4).collect();
                    let code = (hex.len() == 4)
                        .then(|| u32::from_str_radix(&hex, 16).ok())
                        .flatten()
                        .and_then(char::from_u32)
                        .ok_or_else(|| {
                            QueryError::new(i, "\\u must be followed by 4 hexadecimal digits")
                        })?;
                    text.push(code);
                    i += 6;
                    continue;
                }
                _ => match lenient_only {
                    Some(resolved) if literals == Literals::Lenient => resolved,
                    _ => {
                        return Err(QueryError::new(
                            i,
                            format!(
                                "unknown escape sequence '\\{escaped}' in string; IoT Hub allows \\', \\\", \\\\ and \\uXXXX"
                            ),
                        ));
                    }
                },
            };
            text.push(resolved);
            i += 2;
            continue;
        }
        text.push(c);
        i += 1;
    }
    Err(QueryError::new(
        start,
        format!("string opened with {quote} is not closed"),
    ))
}

/// Lexes a number starting at `start`: `0x1F`, `42`, `4.5`, `.5`, `1e3`, `2.5E-2`.
fn lex_number(chars: &[char], start: usize) -> Result<(serde_json::Number, usize), QueryError> {
    let mut i = start;
    if chars[i] == '0' && matches!(chars.get(i + 1), Some('x') | Some('X')) {
        i += 2;
        let digits_start = i;
        while i < chars.len() && chars[i].is_ascii_hexdigit() {
            i += 1;
        }
        let digits: String = chars[digits_start..i].iter().collect();
        let value = u64::from_str_radix(&digits, 16).map_err(|_| {
            QueryError::new(
                start,
                "hexadecimal literal needs 1 to 16 hexadecimal digits after 0x",
            )
        })?;
        check_number_end(chars, i)?;
        return Ok((value.into(), i));
    }
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    let mut is_float = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        is_float = true;
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e') | Some('E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+') | Some('-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(|c| c.is_ascii_digit()) {
            is_float = true;
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    check_number_end(chars, i)?;
    let text: String = chars[start..i].iter().collect();
    let number = if is_float {
        None
    } else {
        text.parse::<u64>().ok().map(serde_json::Number::from)
    };
    let number = match number {
        Some(n) => n,
        None => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .ok_or_else(|| QueryError::new(start, format!("'{text}' is not a valid number")))?,
    };
    Ok((number, i))
}

/// A number directly followed by a letter (`12abc`) is a typo, not two tokens.
fn check_number_end(chars: &[char], end: usize) -> Result<(), QueryError> {
    match chars.get(end) {
        Some(&c) if is_name_char(c) => Err(QueryError::new(
            end,
            format!("unexpected '{c}' right after a number"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(input: &str) -> Vec<TokenKind> {
        tokenize(input)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    fn word(w: &str) -> TokenKind {
        TokenKind::Word(w.into())
    }

    #[test]
    fn operators_and_punctuation() {
        assert_eq!(
            kinds("= != <> < > <= >= + - * / % ( ) [ ] , ."),
            vec![
                TokenKind::Eq,
                TokenKind::NotEq,
                TokenKind::NotEq,
                TokenKind::Lt,
                TokenKind::Gt,
                TokenKind::LtEq,
                TokenKind::GtEq,
                TokenKind::Plus,
                TokenKind::Minus,
                TokenKind::Star,
                TokenKind::Slash,
                TokenKind::Percent,
                TokenKind::LParen,
                TokenKind::RParen,
                TokenKind::LBracket,
                TokenKind::RBracket,
                TokenKind::Comma,
                TokenKind::Dot,
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn positions_are_character_offsets() {
        // 'é' is two bytes in UTF-8 but one character.
        let tokens = tokenize("'é' = x").unwrap();
        assert_eq!(tokens[0].position, 0);
        assert_eq!(tokens[1].position, 4);
        assert_eq!(tokens[2].position, 6);
        assert_eq!(tokens[3].position, 7);
    }

    #[test]
    fn dotted_path_with_dollar_and_brackets() {
        assert_eq!(
            kinds("properties.desired.$version configurations.[[my-config]].status"),
            vec![
                word("properties"),
                TokenKind::Dot,
                word("desired"),
                TokenKind::Dot,
                word("$version"),
                word("configurations"),
                TokenKind::Dot,
                TokenKind::BracketedName("my-config".into()),
                TokenKind::Dot,
                word("status"),
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn strings_with_both_quotes_and_escapes() {
        assert_eq!(
            kinds(r#"'a\'b' "c\"d" 'it''s' '\u0041\n\\' "x'y""#),
            vec![
                TokenKind::Str("a'b".into()),
                TokenKind::Str("c\"d".into()),
                TokenKind::Str("it's".into()),
                TokenKind::Str("A\n\\".into()),
                TokenKind::Str("x'y".into()),
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("42 4.5 .5 1e3 2.5E-2 0x1F 18446744073709551615"),
            vec![
                TokenKind::Number(42u64.into()),
                TokenKind::Number(serde_json::Number::from_f64(4.5).unwrap()),
                TokenKind::Number(serde_json::Number::from_f64(0.5).unwrap()),
                TokenKind::Number(serde_json::Number::from_f64(1000.0).unwrap()),
                TokenKind::Number(serde_json::Number::from_f64(0.025).unwrap()),
                TokenKind::Number(31u64.into()),
                TokenKind::Number(u64::MAX.into()),
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("x = 'open", 4, "not closed"),
            ("x = \"open", 4, "not closed"),
            ("x = 'a\\q'", 6, "unknown escape"),
            ("x = '\\u12'", 5, "4 hexadecimal digits"),
            ("x = 12abc", 6, "right after a number"),
            ("x = 0x", 4, "hexadecimal"),
            ("a.[[open", 2, "not closed with ']]'"),
            ("a.[[]]", 2, "empty property name"),
            ("x = #", 4, "unexpected character '#'"),
            ("x ! y", 2, "unexpected character '!'"),
        ];
        for (input, position, fragment) in cases {
            let err = tokenize(input).unwrap_err();
            assert_eq!(err.position, *position, "position for {input:?}: {err}");
            assert!(
                err.message.contains(fragment),
                "message for {input:?} was {:?}",
                err.message
            );
        }
    }

    fn strings_with(input: &str, literals: Literals) -> Result<Vec<TokenKind>, QueryError> {
        Ok(tokenize_with(input, literals)?
            .into_iter()
            .map(|t| t.kind)
            .collect())
    }

    #[test]
    fn query_literals_take_only_the_documented_escapes() {
        let q = Literals::Query;
        assert_eq!(
            strings_with(r#"'a\'b' "c\"d" 'e\\f' '\u0041' 'it''s'"#, q).unwrap(),
            vec![
                TokenKind::Str("a'b".into()),
                TokenKind::Str("c\"d".into()),
                TokenKind::Str("e\\f".into()),
                TokenKind::Str("A".into()),
                TokenKind::Str("it's".into()),
                TokenKind::Eof,
            ]
        );
        for escape in [r"'\n'", r"'\t'", r"'\/'", r"'\b'", r"'\f'", r"'\r'"] {
            let err = strings_with(escape, q).unwrap_err();
            assert!(err.message.contains("unknown escape"), "{escape}: {err}");
            assert!(!err.literal_rule);
            // The lenient rules still take them.
            assert!(strings_with(escape, Literals::Lenient).is_ok(), "{escape}");
        }
    }

    #[test]
    fn target_conditions_double_quotes_and_refuse_backslashes() {
        let tc = Literals::TargetCondition;
        assert_eq!(
            strings_with("deviceId='operator''sDevice'", tc).unwrap()[2],
            TokenKind::Str("operator'sDevice".into())
        );
        let backslash = strings_with(r"deviceId = 'a\'b'", tc).unwrap_err();
        assert!(backslash.literal_rule, "{backslash}");
        assert_eq!(backslash.position, 13);
        let double = strings_with(r#"deviceId = "x""#, tc).unwrap_err();
        assert!(double.literal_rule && double.position == 11, "{double}");
        let inside = strings_with(r#"tags.a = 'say "hi"'"#, tc).unwrap_err();
        assert!(inside.literal_rule && inside.position == 14, "{inside}");
        let bracketed = strings_with(r#"configurations.[[a"b]].status = 'x'"#, tc).unwrap_err();
        assert!(bracketed.literal_rule, "{bracketed}");
    }

    #[test]
    fn eof_is_positioned_at_the_end() {
        let tokens = tokenize("ab  ").unwrap();
        assert_eq!(
            tokens.last().unwrap(),
            &Token {
                kind: TokenKind::Eof,
                position: 4
            }
        );
    }
}
