//! The files `issuance: Est` adds to a bundle (docs/est.md): the EST CA the device trusts the
//! server with, and its bootstrap identity (certificate and key), which config.toml's
//! `[cert_issuance.est]` names by the same base names.

use super::{BundleError, BundleFile, BundleInput, PUBLIC_MODE, bundle_files, key_file};
use crate::pki::IssuedCertificate;

/// The EST CA's file in the bundle (installed next to the other certificates).
pub const EST_TRUSTED_CA_FILE: &str = "est-server-ca.pem";
/// `[edge_ca.auto_renew]` threshold and retry: aziot's defaults.
pub const EST_AUTO_RENEW: (&str, &str) = ("80%", "4%");

/// What an `issuance: Est` bundle needs beyond a plain one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstBundle {
    /// `https://HOST:PORT/.well-known/est`.
    pub url: String,
    /// PEM of the CA of the EST server's TLS certificate.
    pub trusted_ca_pem: String,
    /// The bootstrap identity: CN = device id, signed by the hierarchy's root.
    pub bootstrap: IssuedCertificate,
}

/// Bundle file names of the bootstrap identity's certificate and key.
pub fn est_file_names(input: &BundleInput) -> (String, String) {
    let stem = input
        .files()
        .edge_ca_cert
        .trim_end_matches(".cert.pem")
        .to_string();
    (
        format!("{stem}.est-bootstrap.cert.pem"),
        format!("{stem}.est-bootstrap.key.pem"),
    )
}

/// Every file of an `issuance: Est` bundle: the plain bundle's, with config.toml enrolling
/// over EST and install.sh installing the EST files too.
pub fn bundle_files_est(
    input: &BundleInput,
    est: &EstBundle,
) -> Result<Vec<BundleFile>, BundleError> {
    let invalid = |field: &'static str, problem: &str| BundleError::InvalidInput {
        device: input.device_id.clone(),
        field,
        problem: problem.to_string(),
    };
    if !est.url.starts_with("https://") || est.url.chars().any(|c| c.is_control() || c == '"') {
        return Err(invalid("EST URL (--est-url)", "must be an https:// URL"));
    }
    if est.trusted_ca_pem.trim().is_empty() {
        return Err(invalid("EST CA", "is empty"));
    }
    let mut files = bundle_files(input)?;
    let (cert, key) = est_file_names(input);
    let extra = [
        (
            EST_TRUSTED_CA_FILE.to_string(),
            "$cert_dir",
            "aziotcs",
            "0644",
        ),
        (cert.clone(), "$cert_dir", "aziotcs", "0644"),
        (key.clone(), "$secret_dir", "aziotks", "0600"),
    ];
    for file in &mut files {
        match file.path.as_str() {
            super::CONFIG_FILE => {
                file.contents = super::config_toml::render(input, Some(est)).into_bytes();
            }
            "install.sh" => {
                file.contents =
                    super::install_sh::render_install_sh_with(input, &extra).into_bytes();
            }
            _ => {}
        }
    }
    files.push(BundleFile {
        path: EST_TRUSTED_CA_FILE.into(),
        contents: super::text::with_trailing_newline(&est.trusted_ca_pem).into_bytes(),
        mode: PUBLIC_MODE,
    });
    files.push(BundleFile {
        path: cert,
        contents: est.bootstrap.cert_pem.clone().into_bytes(),
        mode: PUBLIC_MODE,
    });
    files.push(key_file(&key, &est.bootstrap.key));
    Ok(files)
}
