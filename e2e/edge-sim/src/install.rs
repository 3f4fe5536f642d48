//! Installs a bundle the way its `install.sh` does: `config.toml` (hostnames filled in) to
//! `/etc/aziot/config.toml`, each file a `config.toml` URI names to that path, certificates 0644
//! and private keys 0600. Everything lands under the device's own root folder, which stands for
//! `/` of the simulated machine.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{EdgeConfig, Provisioning, file_uri_name, file_uri_path};

/// Where `config.toml` is installed, relative to the device root.
pub const CONFIG_PATH: &str = "etc/aziot/config.toml";
/// Mode of certificates.
pub const CERT_MODE: u32 = 0o644;
/// Mode of private keys and `config.toml` (it may hold the SAS key).
pub const SECRET_MODE: u32 = 0o600;

/// One file to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFile {
    /// The `config.toml` key whose URI names it, e.g. `edge_ca.pk`.
    pub key: &'static str,
    /// Name of the file in the bundle (the URI's last segment).
    pub bundle_name: String,
    /// Absolute path on the device (`/var/aziot/certs/x.pem`).
    pub device_path: PathBuf,
    /// File mode.
    pub mode: u32,
}

/// The files `config.toml` refers to, where they go and with which mode. Errors name the key
/// whose URI is unusable or whose file the bundle lacks.
pub fn plan_install(
    config: &EdgeConfig,
    bundle_files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<PlannedFile>, String> {
    let mut uris: Vec<(&'static str, &str, u32)> = Vec::new();
    if let Some(uri) = &config.trust_bundle_cert {
        uris.push(("trust_bundle_cert", uri, CERT_MODE));
    }
    if let Some(ca) = &config.edge_ca {
        uris.push(("edge_ca.cert", &ca.cert, CERT_MODE));
        uris.push(("edge_ca.pk", &ca.pk, SECRET_MODE));
    }
    if let Provisioning::X509 {
        identity_cert,
        identity_pk,
        ..
    } = &config.provisioning
    {
        uris.push((
            "provisioning.authentication.identity_cert",
            identity_cert,
            CERT_MODE,
        ));
        uris.push((
            "provisioning.authentication.identity_pk",
            identity_pk,
            SECRET_MODE,
        ));
    }
    let mut out = Vec::new();
    for (key, uri, mode) in uris {
        let device_path = file_uri_path(uri).map_err(|e| format!("{key}: {e}"))?;
        let bundle_name = file_uri_name(uri).map_err(|e| format!("{key}: {e}"))?;
        if !bundle_files.contains_key(&bundle_name) {
            return Err(format!(
                "{key} names {bundle_name:?}, which the bundle does not contain (bundle files: {})",
                bundle_files.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        out.push(PlannedFile {
            key,
            bundle_name,
            device_path,
            mode,
        });
    }
    Ok(out)
}

/// The path of a device path under the device root (`/var/x` → `<root>/var/x`).
pub fn under_root(root: &Path, device_path: &Path) -> PathBuf {
    root.join(device_path.strip_prefix("/").unwrap_or(device_path))
}

/// Writes `config.toml` and the planned files under `root` with their modes.
pub fn install_files(
    root: &Path,
    config_text: &str,
    planned: &[PlannedFile],
    bundle_files: &BTreeMap<String, Vec<u8>>,
) -> std::io::Result<()> {
    write_with_mode(&root.join(CONFIG_PATH), config_text.as_bytes(), SECRET_MODE)?;
    for file in planned {
        let content = bundle_files
            .get(&file.bundle_name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        write_with_mode(&under_root(root, &file.device_path), content, file.mode)?;
    }
    Ok(())
}

fn write_with_mode(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        if mode == SECRET_MODE && parent.ends_with("secrets") {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    // Write beside and rename, so a reader never sees half a file; set the mode before the
    // content lands so a key is never world-readable.
    let staged = path.with_extension("edge-sim-tmp");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&staged)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
    }
    std::fs::rename(&staged, path)
}
