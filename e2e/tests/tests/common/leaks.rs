//! One scan for secrets where they must never appear: the operator's output, and the Events and
//! hierarchy status of the namespaces a test used.
//!
//! Whatever the caller adds, it always looks for a private key PEM block, a SAS token and the hub
//! policy's key; each test adds the key material it made (device keys, the bodies of private
//! keys).

use anyhow::ensure;

use super::Env;

/// Secrets to look for, each with how a finding is named (`{what} appears in {place}`).
pub struct LeakScan<'a> {
    env: &'a Env,
    needles: Vec<(&'static str, String)>,
}

impl<'a> LeakScan<'a> {
    /// A scan that looks for the emulator's owner policy key (named "a key").
    pub fn new(env: &'a Env) -> Self {
        let policy_key = env
            .hub
            .emulator
            .connection_string
            .split("SharedAccessKey=")
            .nth(1)
            .expect("the emulator's connection string has a SharedAccessKey")
            .to_string();
        Self {
            env,
            needles: vec![("a key", policy_key)],
        }
    }

    /// Also looks for each of `secrets`; a finding is named `what`.
    pub fn look_for(
        mut self,
        what: &'static str,
        secrets: impl IntoIterator<Item = String>,
    ) -> Self {
        self.needles
            .extend(secrets.into_iter().map(|secret| (what, secret)));
        self
    }

    /// Scans the operator's output and the Events and hierarchies of `namespaces`: the output
    /// must not be empty, and none may hold a private key PEM block, a SAS token or a secret.
    pub fn run(&self, namespaces: &[&str]) -> anyhow::Result<()> {
        let mut haystacks = vec![("operator output".to_string(), self.env.operator.output())];
        for ns in namespaces {
            let out = self.env.cluster.kubectl(&[
                "-n",
                ns,
                "get",
                "events,edgehierarchies",
                "-o",
                "yaml",
            ])?;
            haystacks.push((
                format!("events and status in {ns}"),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
        check_haystacks(&haystacks, &self.needles)
    }
}

/// Fails naming the first finding: an empty operator output (`(place, text)` pairs whose place
/// starts with `events` may be empty), a private key PEM block, a SAS token or one of `needles`
/// (`(what, secret)`).
pub fn check_haystacks(
    haystacks: &[(String, String)],
    needles: &[(&str, String)],
) -> anyhow::Result<()> {
    for (place, text) in haystacks {
        ensure!(
            !text.is_empty() || place.starts_with("events"),
            "{place} is empty"
        );
        ensure!(
            !has_private_key_header(text),
            "a private key PEM block appears in {place}"
        );
        ensure!(
            !text.contains("SharedAccessSignature"),
            "a SAS token appears in {place}"
        );
        for (what, secret) in needles {
            ensure!(!text.contains(secret.as_str()), "{what} appears in {place}");
        }
    }
    Ok(())
}

/// The base64 body lines of a PEM key (whatever line they are on), to look for elsewhere.
pub fn pem_body_lines(pem: &str) -> impl Iterator<Item = String> + '_ {
    pem.lines()
        .filter(|l| l.len() > 40 && !l.starts_with("-----"))
        .map(str::to_string)
}

/// A PEM private key header such as `-----BEGIN EC PRIVATE KEY-----` (error messages may name
/// the block kind in words, which is fine; a real header is not).
pub fn has_private_key_header(text: &str) -> bool {
    text.match_indices("-----BEGIN ").any(|(at, _)| {
        let rest = &text[at + "-----BEGIN ".len()..];
        rest.find("PRIVATE KEY-----").is_some_and(|end| {
            rest[..end]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == ' ')
        })
    })
}
