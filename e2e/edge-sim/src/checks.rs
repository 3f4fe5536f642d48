//! The checks a simulated device makes on its installed configuration before its runtime starts,
//! modelled on `iotedge check`'s configuration and certificate checks. Each check reads what is
//! installed under the device root, as the real one reads `/etc/aziot` and `/var/aziot`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;

use crate::config::{
    EdgeConfig, HOSTNAME_PLACEHOLDER, PARENT_HOSTNAME_PLACEHOLDER, Provisioning, file_uri_path,
    parse_config,
};
use crate::install::under_root;
use crate::pki::{
    CertFacts, ServerIdentity, cert_facts, issue_server_identity, key_matches, pem_certificates,
};

/// A certificate expiring within this many seconds draws a warning (as `iotedge check` warns
/// about certificates that expire within a week).
pub const NEAR_EXPIRY_SECS: i64 = 7 * 24 * 3600;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Passed,
    /// Works, but needs attention soon.
    Warning,
    /// The runtime cannot start.
    Failed,
    /// Not run because an earlier check it needs failed.
    Skipped,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id, e.g. `edge-ca-chain`.
    pub id: &'static str,
    /// Outcome.
    pub status: CheckStatus,
    /// What was found, and on failure the fix.
    pub detail: String,
}

/// Everything the runtime needs once the checks pass. Debug hides keys.
#[derive(Clone)]
pub struct DeviceMaterial {
    /// The device's hostname.
    pub hostname: String,
    /// The parent's hostname (below the top layer).
    pub parent_hostname: Option<String>,
    /// Root CAs the device trusts.
    pub trust_roots: Vec<CertificateDer<'static>>,
    /// edgeHub's server certificate, issued from the edge CA.
    pub server_identity: ServerIdentity,
    /// How the device authenticates to the hub.
    pub provisioning: Provisioning,
    /// X509 mode: identity certificate and key PEM, concatenated (for the TLS client).
    pub identity_pem: Option<String>,
    /// The agent image of `config.toml`.
    pub agent_image: String,
    /// notAfter of the edge CA, Unix seconds.
    pub edge_ca_not_after: i64,
}

impl fmt::Debug for DeviceMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceMaterial")
            .field("hostname", &self.hostname)
            .field("parent_hostname", &self.parent_hostname)
            .field("trust_roots", &self.trust_roots.len())
            .field("server_identity", &self.server_identity)
            .field("provisioning", &self.provisioning)
            .field(
                "identity_pem",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("agent_image", &self.agent_image)
            .finish()
    }
}

/// The checks of one device and, when none failed, its runtime material.
#[derive(Debug)]
pub struct CheckReport {
    /// Every check in order.
    pub checks: Vec<Check>,
    /// Present when no check failed.
    pub material: Option<DeviceMaterial>,
}

impl CheckReport {
    /// The first failed check, as `id: detail`.
    pub fn first_failure(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| c.status == CheckStatus::Failed)
            .map(|c| format!("{}: {}", c.id, c.detail))
    }
}

/// What the checks know besides the installed files.
#[derive(Clone, Debug)]
pub struct CheckContext<'a> {
    /// The device id the bundle was made for.
    pub device_id: &'a str,
    /// Folder standing for `/` of the device.
    pub root: &'a Path,
    /// Whether the hierarchy gives the device a parent (`None`: unknown).
    pub has_parent_in_tree: Option<bool>,
    /// Now, Unix seconds.
    pub now: i64,
}

struct Recorder {
    checks: Vec<Check>,
}

impl Recorder {
    fn pass(&mut self, id: &'static str, detail: impl Into<String>) {
        self.push(id, CheckStatus::Passed, detail.into());
    }
    fn warn(&mut self, id: &'static str, detail: impl Into<String>) {
        self.push(id, CheckStatus::Warning, detail.into());
    }
    fn fail(&mut self, id: &'static str, detail: impl Into<String>) {
        self.push(id, CheckStatus::Failed, detail.into());
    }
    fn skip(&mut self, id: &'static str, why: &str) {
        self.push(id, CheckStatus::Skipped, format!("not checked: {why}"));
    }
    fn push(&mut self, id: &'static str, status: CheckStatus, detail: String) {
        self.checks.push(Check { id, status, detail });
    }
}

/// Every check id, in the order they run (the README lists what each one verifies).
pub const CHECK_IDS: [&str; 11] = [
    "config-toml",
    "hostname",
    "parent-hostname",
    "connection",
    "agent-image",
    "trust-bundle",
    "edge-ca-key",
    "edge-ca-expiry",
    "edge-ca-chain",
    "identity-certificate",
    "bundle-files",
];

/// A usable IoT Edge hostname: an IP address, or an FQDN under 64 characters made of letters,
/// digits, `-` and `.` with no empty label.
pub fn hostname_problem(hostname: &str) -> Option<String> {
    if hostname.is_empty() {
        return Some("it is empty".into());
    }
    if hostname == HOSTNAME_PLACEHOLDER || hostname == PARENT_HOSTNAME_PLACEHOLDER {
        return Some(format!(
            "it is still the placeholder {hostname}; install.sh must fill it in"
        ));
    }
    if hostname.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if hostname.len() >= 64 {
        return Some(format!(
            "{hostname:?} has {} characters; IoT Edge needs fewer than 64",
            hostname.len()
        ));
    }
    if let Some(c) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "{hostname:?} contains {c:?}; use letters, digits, '-' and '.'"
        ));
    }
    if hostname
        .split('.')
        .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
    {
        return Some(format!(
            "{hostname:?} has an empty label or one starting or ending with '-'"
        ));
    }
    None
}

/// `$upstream:<port>/...` → the port.
pub fn upstream_port(image: &str) -> Option<u16> {
    let rest = image.strip_prefix("$upstream:")?;
    let (port, path) = rest.split_once('/')?;
    if path.is_empty() {
        return None;
    }
    port.parse().ok()
}

fn read_file(root: &Path, uri: &str) -> Result<Vec<u8>, String> {
    let path = file_uri_path(uri)?;
    std::fs::read(under_root(root, &path))
        .map_err(|e| format!("{} cannot be read ({e})", path.display()))
}

fn format_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// Runs every check on the installed configuration (`config_text` is what was installed as
/// `/etc/aziot/config.toml`).
pub fn run_checks(config_text: &str, ctx: &CheckContext<'_>) -> CheckReport {
    let mut r = Recorder { checks: Vec::new() };
    let config = match parse_config(config_text) {
        Ok(config) => {
            r.pass("config-toml", "/etc/aziot/config.toml parses");
            config
        }
        Err(e) => {
            r.fail("config-toml", e);
            for id in &CHECK_IDS[1..] {
                r.skip(id, "config.toml does not parse");
            }
            return CheckReport {
                checks: r.checks,
                material: None,
            };
        }
    };
    let material = check_parsed(&config, ctx, &mut r);
    let failed = r.checks.iter().any(|c| c.status == CheckStatus::Failed);
    CheckReport {
        checks: r.checks,
        material: if failed { None } else { material },
    }
}

fn check_parsed(
    config: &EdgeConfig,
    ctx: &CheckContext<'_>,
    r: &mut Recorder,
) -> Option<DeviceMaterial> {
    // hostname
    let hostname = match config.hostname.as_deref() {
        None => {
            r.fail(
                "hostname",
                "hostname is missing from config.toml; set it to the device's FQDN or IP address",
            );
            None
        }
        Some(h) => match hostname_problem(h) {
            Some(p) => {
                r.fail("hostname", format!("hostname: {p}"));
                None
            }
            None => {
                r.pass("hostname", format!("hostname {h}"));
                Some(h.to_string())
            }
        },
    };
    // parent_hostname
    let is_child = config.parent_hostname.is_some() || ctx.has_parent_in_tree == Some(true);
    match (config.parent_hostname.as_deref(), ctx.has_parent_in_tree) {
        (None, Some(true)) => r.fail(
            "parent-hostname",
            format!("device {} has a parent in the hierarchy, but config.toml has no parent_hostname; set it to the parent's hostname", ctx.device_id),
        ),
        (None, _) => r.pass("parent-hostname", "top layer: no parent_hostname"),
        (Some(_), Some(false)) => r.fail(
            "parent-hostname",
            format!("config.toml sets parent_hostname, but device {} has no parent in the hierarchy; remove it or give the device a parent", ctx.device_id),
        ),
        (Some(p), _) => match hostname_problem(p) {
            Some(problem) => r.fail("parent-hostname", format!("parent_hostname: {problem}")),
            None if Some(p) == hostname.as_deref() => r.fail(
                "parent-hostname",
                format!("parent_hostname {p} is the device's own hostname; set the parent's"),
            ),
            None => r.pass("parent-hostname", format!("parent_hostname {p}")),
        },
    }
    // connection
    let device_id = config.provisioning.device_id();
    let mut connection_ok = true;
    if device_id != ctx.device_id {
        connection_ok = false;
        r.fail(
            "connection",
            format!(
                "config.toml provisions device {device_id:?}, but the bundle is for {:?}; install the device's own bundle",
                ctx.device_id
            ),
        );
    } else if let Some(key) = config.provisioning.shared_access_key() {
        match base64::engine::general_purpose::STANDARD.decode(key) {
            Ok(bytes) if !bytes.is_empty() => r.pass(
                "connection",
                format!(
                    "SAS authentication as {device_id} to {}",
                    config.provisioning.iothub_hostname()
                ),
            ),
            _ => {
                connection_ok = false;
                r.fail("connection", "the SharedAccessKey of the connection string is not base64; copy the device's primary key again");
            }
        }
    } else {
        r.pass(
            "connection",
            format!(
                "X509 authentication as {device_id} to {}",
                config.provisioning.iothub_hostname()
            ),
        );
    }
    // agent image
    let agent_image = config.agent_image.clone().unwrap_or_default();
    match (is_child, agent_image.as_str(), upstream_port(&agent_image)) {
        (_, "", _) => r.fail("agent-image", "[agent.config] image is missing; set the edgeAgent image"),
        (true, _, Some(port)) => r.pass("agent-image", format!("{agent_image} (pulled through the parent's API proxy on port {port})")),
        (true, image, None) => r.fail(
            "agent-image",
            format!("{image} is not pulled through the parent: below the top layer the agent image must be $upstream:<port>/azureiotedge-agent:<tag>"),
        ),
        (false, image, Some(_)) => r.fail(
            "agent-image",
            format!("{image} uses $upstream, but a top-layer device has no parent; use the registry's own host name"),
        ),
        (false, image, None) => r.pass("agent-image", image.to_string()),
    }
    // trust bundle
    let trust_roots = match &config.trust_bundle_cert {
        None => {
            r.fail(
                "trust-bundle",
                "trust_bundle_cert is missing from config.toml; point it at the root CA file",
            );
            None
        }
        Some(uri) => match read_file(ctx.root, uri).and_then(|pem| {
            pem_certificates(&pem).map_err(|e| format!("the trust bundle {uri}: {e}"))
        }) {
            Err(e) => {
                r.fail("trust-bundle", e);
                None
            }
            Ok(certs) => {
                let mut problems = Vec::new();
                for cert in &certs {
                    match cert_facts(cert) {
                        Ok(f) if !f.is_ca => problems.push(format!("{} is not a CA", f.subject)),
                        Ok(f) if f.not_after < ctx.now => problems.push(format!(
                            "{} expired on {}",
                            f.subject,
                            format_time(f.not_after)
                        )),
                        Ok(_) => {}
                        Err(e) => problems.push(e),
                    }
                }
                if problems.is_empty() {
                    r.pass("trust-bundle", format!("{} root CA(s)", certs.len()));
                    Some(certs)
                } else {
                    r.fail(
                        "trust-bundle",
                        format!("the trust bundle {uri}: {}", problems.join("; ")),
                    );
                    None
                }
            }
        },
    };
    // edge CA certificate and key
    let edge_ca = match &config.edge_ca {
        None => {
            r.fail(
                "edge-ca-key",
                "[edge_ca] is missing; set cert and pk to the edge CA chain and key",
            );
            None
        }
        Some(files) => {
            let chain = read_file(ctx.root, &files.cert).and_then(|pem| {
                let certs = pem_certificates(&pem)
                    .map_err(|e| format!("edge_ca.cert {}: {e}", files.cert))?;
                let facts = cert_facts(&certs[0])?;
                Ok((String::from_utf8_lossy(&pem).into_owned(), facts))
            });
            let key =
                read_file(ctx.root, &files.pk).map(|k| String::from_utf8_lossy(&k).into_owned());
            match (chain, key) {
                (Err(e), _) | (_, Err(e)) => {
                    r.fail("edge-ca-key", e);
                    None
                }
                (Ok((chain_pem, facts)), Ok(key_pem)) => {
                    match key_matches(&key_pem, &facts.public_key) {
                        Ok(true) => {
                            r.pass("edge-ca-key", format!("the key matches {}", facts.subject));
                            Some((chain_pem, key_pem, facts))
                        }
                        Ok(false) => {
                            r.fail("edge-ca-key", format!("edge_ca.pk is not the key of {} ({}); install the key issued with it", facts.subject, files.cert));
                            None
                        }
                        Err(e) => {
                            r.fail("edge-ca-key", format!("edge_ca.pk: {e}"));
                            None
                        }
                    }
                }
            }
        }
    };
    match &edge_ca {
        None => r.skip("edge-ca-expiry", "the edge CA could not be read"),
        Some((_, _, facts)) => expiry_check(r, "edge-ca-expiry", "edge CA", facts, ctx.now),
    }
    // chain: the edge CA must be a CA that the trust bundle vouches for. It is proven the way a
    // child proves it: a server certificate issued from the edge CA must verify for the hostname.
    let server_identity = match (&edge_ca, &trust_roots, &hostname) {
        (Some((chain_pem, key_pem, facts)), Some(roots), Some(hostname)) => {
            verify_chain(r, chain_pem, key_pem, facts, roots, hostname, ctx.now)
        }
        _ => {
            r.skip(
                "edge-ca-chain",
                "the hostname, trust bundle or edge CA failed",
            );
            None
        }
    };
    // identity certificate
    let identity_pem = match &config.provisioning {
        Provisioning::X509 {
            identity_cert,
            identity_pk,
            ..
        } => check_identity(r, ctx, identity_cert, identity_pk),
        _ => {
            r.pass("identity-certificate", "not used (SAS authentication)");
            None
        }
    };
    check_installed_files(r, config, ctx.root);
    let (_, _, facts) = edge_ca?;
    if !connection_ok {
        return None;
    }
    Some(DeviceMaterial {
        hostname: hostname?,
        parent_hostname: config.parent_hostname.clone(),
        trust_roots: trust_roots?,
        server_identity: server_identity?,
        provisioning: config.provisioning.clone(),
        identity_pem,
        agent_image,
        edge_ca_not_after: facts.not_after,
    })
}

/// Every file `config.toml` names is installed; private keys are readable by their owner only.
fn check_installed_files(r: &mut Recorder, config: &EdgeConfig, root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<(&str, bool)> = Vec::new();
    if let Some(uri) = &config.trust_bundle_cert {
        files.push((uri, false));
    }
    if let Some(ca) = &config.edge_ca {
        files.push((&ca.cert, false));
        files.push((&ca.pk, true));
    }
    if let Provisioning::X509 {
        identity_cert,
        identity_pk,
        ..
    } = &config.provisioning
    {
        files.push((identity_cert, false));
        files.push((identity_pk, true));
    }
    let mut problems = Vec::new();
    for (uri, secret) in &files {
        let Ok(path) = file_uri_path(uri) else {
            problems.push(format!("{uri} is not a file URI"));
            continue;
        };
        match std::fs::metadata(under_root(root, &path)) {
            Err(_) => problems.push(format!("{} is not installed", path.display())),
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if *secret && mode & 0o077 != 0 {
                    problems.push(format!(
                        "{} has mode {mode:04o}; a private key must be 0600",
                        path.display()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        r.pass(
            "bundle-files",
            format!("{} file(s) installed; private keys are 0600", files.len()),
        );
    } else {
        r.fail("bundle-files", problems.join("; "));
    }
}

fn expiry_check(r: &mut Recorder, id: &'static str, what: &str, facts: &CertFacts, now: i64) {
    if facts.not_before > now {
        r.fail(
            id,
            format!(
                "the {what} is not valid before {}; check the clock",
                format_time(facts.not_before)
            ),
        );
    } else if facts.not_after <= now {
        r.fail(
            id,
            format!(
                "the {what} expired on {}; renew it and install the new bundle",
                format_time(facts.not_after)
            ),
        );
    } else if facts.not_after - now < NEAR_EXPIRY_SECS {
        r.warn(
            id,
            format!(
                "the {what} expires on {}, within 7 days; renew it",
                format_time(facts.not_after)
            ),
        );
    } else {
        r.pass(
            id,
            format!("the {what} is valid until {}", format_time(facts.not_after)),
        );
    }
}

fn verify_chain(
    r: &mut Recorder,
    chain_pem: &str,
    key_pem: &str,
    facts: &CertFacts,
    roots: &[CertificateDer<'static>],
    hostname: &str,
    now: i64,
) -> Option<ServerIdentity> {
    if !facts.is_ca {
        r.fail("edge-ca-chain", format!("{} is not a CA (basicConstraints CA:TRUE missing); edgeHub cannot issue its server certificate from it", facts.subject));
        return None;
    }
    let identity = match issue_server_identity(chain_pem, key_pem, hostname, facts.not_after, now) {
        Ok(identity) => identity,
        Err(e) => {
            r.fail("edge-ca-chain", e);
            return None;
        }
    };
    match verify_server_chain(roots, &identity.chain, hostname, now) {
        Ok(()) => {
            r.pass(
                "edge-ca-chain",
                format!(
                    "{} is a CA and verifies against the trust bundle",
                    facts.subject
                ),
            );
            Some(identity)
        }
        Err(e) => {
            r.fail("edge-ca-chain", format!("a server certificate from {} (issuer {}) does not verify against the trust bundle: {e}; the trust bundle must hold the root that signed the edge CA", facts.subject, facts.issuer));
            None
        }
    }
}

/// Verifies a server chain (leaf first) for `hostname` against `roots`, as a TLS client would.
pub fn verify_server_chain(
    roots: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    hostname: &str,
    now: i64,
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| {
            format!("a trust bundle certificate is unusable as a trust anchor ({e})")
        })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| format!("cannot build a verifier ({e})"))?;
    let name = ServerName::try_from(hostname.to_string())
        .map_err(|e| format!("hostname {hostname:?}: {e}"))?;
    let (leaf, intermediates) = chain.split_first().ok_or("the chain is empty")?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_identity(
    r: &mut Recorder,
    ctx: &CheckContext<'_>,
    cert_uri: &str,
    key_uri: &str,
) -> Option<String> {
    let cert = read_file(ctx.root, cert_uri);
    let key = read_file(ctx.root, key_uri);
    let (cert_pem, key_pem) = match (cert, key) {
        (Err(e), _) | (_, Err(e)) => {
            r.fail("identity-certificate", e);
            return None;
        }
        (Ok(c), Ok(k)) => (
            String::from_utf8_lossy(&c).into_owned(),
            String::from_utf8_lossy(&k).into_owned(),
        ),
    };
    let facts = match pem_certificates(cert_pem.as_bytes()).and_then(|certs| cert_facts(&certs[0]))
    {
        Ok(f) => f,
        Err(e) => {
            r.fail(
                "identity-certificate",
                format!("identity_cert {cert_uri}: {e}"),
            );
            return None;
        }
    };
    match key_matches(&key_pem, &facts.public_key) {
        Ok(true) => {}
        Ok(false) => {
            r.fail(
                "identity-certificate",
                format!(
                    "identity_pk is not the key of {}; install the key issued with it",
                    facts.subject
                ),
            );
            return None;
        }
        Err(e) => {
            r.fail("identity-certificate", format!("identity_pk: {e}"));
            return None;
        }
    }
    let before = r.checks.len();
    expiry_check(
        r,
        "identity-certificate",
        "identity certificate",
        &facts,
        ctx.now,
    );
    if r.checks[before].status == CheckStatus::Failed {
        return None;
    }
    if r.checks[before].status == CheckStatus::Passed {
        r.checks[before].detail = format!(
            "{} matches its key; {}",
            facts.subject, r.checks[before].detail
        );
    }
    Some(format!("{}\n{}", cert_pem.trim_end(), key_pem))
}

#[cfg(test)]
mod tests;
