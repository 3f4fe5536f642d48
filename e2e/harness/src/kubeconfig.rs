//! Kubeconfig files for the local control plane.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::pki::CertAndKey;

/// Renders a kubeconfig with one cluster, one client-certificate user and one current context.
/// Certificates are embedded, so the file can be copied elsewhere.
pub fn render(server: &str, ca_cert_pem: &str, user: &str, identity: &CertAndKey) -> String {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "e2e",
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_cert_pem),
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": STANDARD.encode(&identity.cert_pem),
                "client-key-data": STANDARD.encode(&identity.key_pem),
            },
        }],
        "contexts": [{
            "name": "e2e",
            "context": {"cluster": "e2e", "user": user, "namespace": "default"},
        }],
        "current-context": "e2e",
    });
    serde_yaml::to_string(&config).expect("a JSON value always renders as YAML")
}

/// Writes a file readable by the owner only: a kubeconfig or a key (both hold a private key).
pub fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_is_read_by_kube() {
        let identity = CertAndKey {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let text = render("https://127.0.0.1:6443", "CA", "admin", &identity);
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("e2e"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(STANDARD.encode("CA").as_str())
        );
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.client_certificate_data.as_deref(),
            Some(STANDARD.encode("CERT").as_str())
        );
    }
}
