//! Just enough of nginx's configuration language to tell what an API proxy's custom
//! configuration (its module twin's `proxy_config`) relays: directives, their arguments and
//! blocks. No directive is interpreted here; the gateway check reads the tree.
//!
//! The API proxy (Azure/iotedge `edge-modules/api-proxy-module`, `config_monitor.rs`) replaces
//! `${VAR}` for the variables named in its env `NGINX_CONFIG_ENV_VAR_LIST` (a default list when
//! unset) with their env values, "0" when unset, before nginx reads the file; [`substitute`] does
//! the same so ports written as `${NGINX_DEFAULT_PORT}` are read as the proxy will.

use std::collections::BTreeMap;

/// One directive: `name args...;` or `name args... { children }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// `Some` for a block, even an empty one.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directives of its block named `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> + 'a {
        self.block.iter().flatten().filter(move |d| d.name == name)
    }
}

/// The API proxy's variables when `NGINX_CONFIG_ENV_VAR_LIST` is unset.
pub const DEFAULT_VARIABLES: &[&str] = &[
    "NGINX_DEFAULT_PORT",
    "BLOB_UPLOAD_ROUTE_ADDRESS",
    "DOCKER_REQUEST_ROUTE_ADDRESS",
    "IOTEDGE_PARENTHOSTNAME",
];
/// The env variable that replaces [`DEFAULT_VARIABLES`].
pub const VARIABLE_LIST_ENV: &str = "NGINX_CONFIG_ENV_VAR_LIST";

/// The API proxy's values for variables its env leaves unset.
pub const DEFAULT_VALUES: &[(&str, &str)] = &[("NGINX_DEFAULT_PORT", "443")];

/// `text` with `${VAR}` replaced as the API proxy does, for each variable of its list (split on
/// ',' as it is, spaces kept): the variable's value in `env` (or its default), and when that value
/// names another variable of `env`, that one's value (one level); "0" when unset. Other `${...}`
/// (nginx's own variables) stay. Variables IoT Edge sets at run time (`IOTEDGE_*`) are not known
/// here and read as "0".
pub fn substitute(text: &str, env: &BTreeMap<String, String>) -> String {
    let list = env
        .get(VARIABLE_LIST_ENV)
        .cloned()
        .unwrap_or_else(|| DEFAULT_VARIABLES.join(","));
    let value_of = |name: &str| -> String {
        let own = env.get(name).cloned().or_else(|| {
            DEFAULT_VALUES
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        });
        match own {
            Some(value) => env.get(&value).cloned().unwrap_or(value),
            None => "0".to_string(),
        }
    };
    let values: BTreeMap<&str, String> = list.split(',').map(|k| (k, value_of(k))).collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after
            .find('}')
            .and_then(|end| Some((end, values.get(&after[..end])?)))
        {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The directives of a configuration, or where it stops making sense (an unbalanced brace, a
/// directive without `;`, an unterminated quote).
pub fn parse(text: &str) -> Result<Vec<Directive>, String> {
    let tokens = tokenize(text)?;
    let mut stack: Vec<(Directive, Vec<Directive>)> = Vec::new();
    let mut top: Vec<Directive> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    for token in tokens {
        match token {
            Token::Word(w) => words.push(w),
            Token::Semicolon => {
                let directive = directive(std::mem::take(&mut words))?;
                match stack.last_mut() {
                    Some((_, children)) => children.push(directive),
                    None => top.push(directive),
                }
            }
            Token::Open => {
                let open = directive(std::mem::take(&mut words))?;
                stack.push((open, Vec::new()));
            }
            Token::Close => {
                if !words.is_empty() {
                    return Err(format!("{:?} is not ended by ';'", words.join(" ")));
                }
                let (mut block, children) = stack.pop().ok_or("a '}' closes no block")?;
                block.block = Some(children);
                match stack.last_mut() {
                    Some((_, siblings)) => siblings.push(block),
                    None => top.push(block),
                }
            }
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(format!("the {:?} block is not closed", open.name));
    }
    if !words.is_empty() {
        return Err(format!("{:?} is not ended by ';'", words.join(" ")));
    }
    Ok(top)
}

fn directive(mut words: Vec<String>) -> Result<Directive, String> {
    if words.is_empty() {
        return Err("a ';' or '{' follows no directive".into());
    }
    let name = words.remove(0);
    Ok(Directive {
        name,
        args: words,
        block: None,
    })
}

enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if !word.is_empty() {
            tokens.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if word.is_empty() => {
                // A comment runs to the end of the line (the proxy's #if_tag lines too).
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if word.is_empty() => {
                let mut quoted = String::new();
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                quoted.push(escaped);
                            }
                        }
                        q if q == c => {
                            closed = true;
                            break;
                        }
                        q => quoted.push(q),
                    }
                }
                if !closed {
                    return Err("a quoted string is not closed".into());
                }
                tokens.push(Token::Word(quoted));
            }
            // `${VAR}` is one word, braces included.
            '$' if chars.peek() == Some(&'{') => {
                word.push('$');
                for c in chars.by_ref() {
                    word.push(c);
                    if c == '}' {
                        break;
                    }
                }
            }
            ';' | '{' | '}' => {
                flush(&mut word, &mut tokens);
                tokens.push(match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                });
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    Ok(tokens)
}

/// The port of a `listen` argument: `8443`, `*:8443`, `0.0.0.0:8443`, `[::]:8443`; `None` for
/// a host without port (nginx then listens on 80) or something that is no port.
pub fn listen_port(arg: &str) -> Option<u16> {
    arg.rsplit_once(':')
        .map_or(arg, |(_, port)| port)
        .parse()
        .ok()
}

#[cfg(test)]
#[path = "tests/nginx.rs"]
mod tests;
