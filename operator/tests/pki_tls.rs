//! Real TLS (tokio-rustls) between a child and its parent, the way nested IoT Edge connects:
//! the parent presents a server certificate issued by its own edge CA for its hostname; the child
//! trusts only the trust bundle of its own bundle. A certificate from another hierarchy's CA is
//! rejected, and during a root rotation a trust bundle with both roots accepts both.

use std::sync::Arc;
use std::time::Duration;

use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::bundle::{BundleInput, DeviceAuth, TRUST_BUNDLE_FILE, bundle_files};
use edge_hierarchy_operator::pki::{
    IssuedCertificate, RootCa, generate_key, generate_root_ca, issue_edge_ca,
    issue_server_certificate,
};
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(86400);
const PARENT_HOSTNAME: &str = "top-layer.factory.example";

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

struct Hierarchy {
    root: RootCa,
    parent_edge_ca: IssuedCertificate,
    child_edge_ca: IssuedCertificate,
}

fn hierarchy(name: &str, now: Timestamp) -> Hierarchy {
    let key = || generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca(name, &key(), 365 * DAY, now).unwrap();
    let parent_edge_ca = issue_edge_ca(&root, "top-layer", &key(), 90 * DAY, now).unwrap();
    let child_edge_ca = issue_edge_ca(&root, "lower-layer", &key(), 90 * DAY, now).unwrap();
    Hierarchy {
        root,
        parent_edge_ca,
        child_edge_ca,
    }
}

/// The trust bundle file of the child's rendered bundle, exactly as the device gets it.
fn child_trust_bundle(h: &Hierarchy, roots: Vec<String>) -> String {
    let input = BundleInput {
        hierarchy: "tutorial".into(),
        namespace: "iot".into(),
        hub_hostname: "my-hub.azure-devices.net".into(),
        device_id: "lower-layer".into(),
        layer: 2,
        parent_device_id: Some("top-layer".into()),
        hostname: None,
        parent_hostname: Some(PARENT_HOSTNAME.into()),
        auth: DeviceAuth::SymmetricKey {
            shared_access_key: "c2VjcmV0LWtleQ==".into(),
        },
        trust_bundle: roots,
        edge_ca: h.child_edge_ca.clone(),
        agent_image: "$upstream:443/azureiotedge-agent:1.5".into(),
        upstream_port: 443,
        agent_auth: None,
    };
    let files = bundle_files(&input).unwrap();
    let file = files
        .iter()
        .find(|f| f.path == TRUST_BUNDLE_FILE)
        .expect("trust bundle in the bundle");
    String::from_utf8(file.contents.clone()).unwrap()
}

fn ders(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

fn server_config(server: &IssuedCertificate) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(pem::parse(server.key.pem()).unwrap().into_contents().into());
    Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(ders(&server.chain_pem), key)
            .unwrap(),
    )
}

/// Serves one TLS connection with `server`'s chain and tries to connect to it as `hostname`,
/// trusting only `trust_bundle`. Returns what the server sent, or the client's TLS error.
async fn handshake(
    server: &IssuedCertificate,
    trust_bundle: &str,
    hostname: &str,
) -> Result<String, rustls::Error> {
    install_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // A rejected handshake ends with an error on this side too; the client reports it.
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let _ = tls.write_all(b"hello from the parent").await;
            let _ = tls.shutdown().await;
        }
    });

    let mut roots = RootCertStore::empty();
    for der in ders(trust_bundle) {
        roots.add(der).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(hostname.to_string()).unwrap();
    let result = match connector.connect(name, tcp).await {
        Ok(mut tls) => {
            let mut received = String::new();
            tls.read_to_string(&mut received).await.unwrap();
            Ok(received)
        }
        Err(e) => Err(e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("not a TLS error: {e}"))),
    };
    server_task.await.unwrap();
    result
}

fn server_certificate(
    edge_ca: &IssuedCertificate,
    hostname: &str,
    now: Timestamp,
) -> IssuedCertificate {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    issue_server_certificate(edge_ca, hostname, &key, 30 * DAY, now).unwrap()
}

#[tokio::test]
async fn child_trusts_a_server_certificate_from_its_parents_edge_ca() {
    let now = Timestamp::now();
    let tutorial = hierarchy("tutorial", now);
    let trust_bundle = child_trust_bundle(&tutorial, vec![tutorial.root.cert_pem.clone()]);
    // The child's bundle carries the root only, not the parent's edge CA.
    assert_eq!(ders(&trust_bundle), ders(&tutorial.root.cert_pem));

    let server = server_certificate(&tutorial.parent_edge_ca, PARENT_HOSTNAME, now);
    let received = handshake(&server, &trust_bundle, PARENT_HOSTNAME).await;
    assert_eq!(received.unwrap(), "hello from the parent");

    // Parents known by IP address work the same way.
    let by_ip = server_certificate(&tutorial.parent_edge_ca, "127.0.0.1", now);
    assert_eq!(
        handshake(&by_ip, &trust_bundle, "127.0.0.1").await.unwrap(),
        "hello from the parent"
    );
}

#[tokio::test]
async fn child_rejects_a_server_certificate_from_another_hierarchy() {
    let now = Timestamp::now();
    let tutorial = hierarchy("tutorial", now);
    let other = hierarchy("other", now);
    let trust_bundle = child_trust_bundle(&tutorial, vec![tutorial.root.cert_pem.clone()]);

    let impostor = server_certificate(&other.parent_edge_ca, PARENT_HOSTNAME, now);
    let error = handshake(&impostor, &trust_bundle, PARENT_HOSTNAME)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn child_rejects_its_parents_certificate_for_another_hostname() {
    let now = Timestamp::now();
    let tutorial = hierarchy("tutorial", now);
    let trust_bundle = child_trust_bundle(&tutorial, vec![tutorial.root.cert_pem.clone()]);
    let server = server_certificate(&tutorial.parent_edge_ca, "elsewhere.factory.example", now);
    let error = handshake(&server, &trust_bundle, PARENT_HOSTNAME)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn during_root_rotation_the_trust_bundle_accepts_old_and_new_roots() {
    let now = Timestamp::now();
    let old = hierarchy("tutorial", now);
    let new = hierarchy("tutorial", now);
    let both = child_trust_bundle(
        &new,
        vec![old.root.cert_pem.clone(), new.root.cert_pem.clone()],
    );
    assert_eq!(ders(&both).len(), 2);
    for parent in [&old, &new] {
        let server = server_certificate(&parent.parent_edge_ca, PARENT_HOSTNAME, now);
        assert_eq!(
            handshake(&server, &both, PARENT_HOSTNAME).await.unwrap(),
            "hello from the parent"
        );
    }
    // Once the old root is dropped, a parent still on the old edge CA is refused. Both roots
    // carry the hierarchy's name, so the verifier finds the new root by name and then rejects
    // the signature.
    let new_only = child_trust_bundle(&new, vec![new.root.cert_pem.clone()]);
    let stale = server_certificate(&old.parent_edge_ca, PARENT_HOSTNAME, now);
    let error = handshake(&stale, &new_only, PARENT_HOSTNAME)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer
            )
        ),
        "{error:?}"
    );
}
