//! Hand-made device bundles for tests: a root CA, edge CAs, identity certificates and
//! `config.toml` texts in the aziot-edge format, built without the operator (so tests of the
//! simulation do not inherit the operator's bugs).

use std::collections::BTreeMap;
use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use crate::source::Bundle;

/// A CA certificate and its key (PEM). Debug hides the key.
#[derive(Clone)]
pub struct TestCa {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// A self-signed root CA named `cn`, valid for a year.
pub fn root_ca(cn: &str) -> TestCa {
    let key = KeyPair::generate().expect("generating a P-256 key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = days(-1);
    params.not_after = days(365);
    let cert = params.self_signed(&key).expect("self-signing the root CA");
    TestCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// An edge CA for `device_id` (CN `<id>.deviceca`, CA:TRUE pathlen 0) signed by `root`, valid
/// for `valid_days` from yesterday; `ca: false` makes a broken one that is no CA.
pub fn edge_ca(root: &TestCa, device_id: &str, valid_days: i64, ca: bool) -> TestCa {
    let root_key = KeyPair::from_pem(&root.key_pem).expect("root key");
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, root_key).expect("root certificate");
    let key = KeyPair::generate().expect("generating a P-256 key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{device_id}.deviceca"));
    params.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Constrained(0))
    } else {
        IsCa::ExplicitNoCa
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = days(-1);
    params.not_after = days(valid_days);
    let cert = params
        .signed_by(&key, &issuer)
        .expect("signing the edge CA");
    TestCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A self-signed identity certificate (CN = device id, clientAuth) and its SHA-256 thumbprint
/// (upper-case hex, as IoT Hub shows it).
pub fn identity(device_id: &str) -> (TestCa, String) {
    let key = KeyPair::generate().expect("generating a P-256 key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = days(-1);
    params.not_after = days(365);
    let cert = params.self_signed(&key).expect("self-signing the identity");
    let thumbprint: String = Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    (
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        thumbprint,
    )
}

/// How a hand-made bundle authenticates.
#[derive(Clone)]
pub enum TestAuth {
    /// SAS key (base64).
    Sas(String),
    /// X509 identity certificate and key.
    X509(TestCa),
}

/// What goes into a hand-made bundle.
#[derive(Clone)]
pub struct BundleSpec {
    /// Device id (also the file stem).
    pub device_id: String,
    /// IoT Hub host name (`localhost:<port>` for the emulator).
    pub hub_host: String,
    /// `hostname`; `None` writes the `{{HOSTNAME}}` placeholder.
    pub hostname: Option<String>,
    /// `Some(None)`: below the top layer with the `{{PARENT_HOSTNAME}}` placeholder;
    /// `Some(Some(h))`: parent hostname `h`; `None`: top layer.
    pub parent_hostname: Option<Option<String>>,
    /// The device's credential.
    pub auth: TestAuth,
    /// Trust bundle PEM (one or more root CAs).
    pub trust_bundle_pem: String,
    /// The device's edge CA.
    pub edge_ca: TestCa,
    /// The root that signed the edge CA (appended to the full chain).
    pub root_pem: String,
    /// Upstream port of the agent image below the top layer.
    pub upstream_port: u16,
}

/// The `config.toml` of a spec, in the aziot-edge 1.4/1.5 format.
pub fn config_toml(spec: &BundleSpec) -> String {
    let id = &spec.device_id;
    let mut out = String::new();
    out.push_str(&format!(
        "# IoT Edge configuration of {id} (hand-made test bundle)\n\n"
    ));
    out.push_str(&format!(
        "hostname = \"{}\"\n",
        spec.hostname.as_deref().unwrap_or("{{HOSTNAME}}")
    ));
    if let Some(parent) = &spec.parent_hostname {
        out.push_str(&format!(
            "parent_hostname = \"{}\"\n",
            parent.as_deref().unwrap_or("{{PARENT_HOSTNAME}}")
        ));
    }
    out.push_str("trust_bundle_cert = \"file:///var/aziot/certs/iotedge_config_cli_root.pem\"\n\n[provisioning]\nsource = \"manual\"\n");
    match &spec.auth {
        TestAuth::Sas(key) => out.push_str(&format!(
            "connection_string = \"HostName={};DeviceId={id};SharedAccessKey={key}\"\n\n",
            spec.hub_host
        )),
        TestAuth::X509(_) => out.push_str(&format!(
            "iothub_hostname = \"{}\"\ndevice_id = \"{id}\"\n\n[provisioning.authentication]\nmethod = \"x509\"\nidentity_cert = \"file:///var/aziot/certs/{id}.hub-auth.cert.pem\"\nidentity_pk = \"file:///var/aziot/secrets/{id}.hub-auth.key.pem\"\n\n",
            spec.hub_host
        )),
    }
    out.push_str(&format!(
        "[edge_ca]\ncert = \"file:///var/aziot/certs/{id}.full-chain.cert.pem\"\npk = \"file:///var/aziot/secrets/{id}.key.pem\"\n\n[agent]\nname = \"edgeAgent\"\ntype = \"docker\"\n\n[agent.config]\n"
    ));
    let image = if spec.parent_hostname.is_some() {
        format!("$upstream:{}/azureiotedge-agent:1.5", spec.upstream_port)
    } else {
        "mcr.microsoft.com/azureiotedge-agent:1.5".to_string()
    };
    out.push_str(&format!("image = \"{image}\"\n"));
    out
}

/// The bundle of a spec, with the tutorial zip's file names.
pub fn bundle(spec: &BundleSpec) -> Bundle {
    let id = &spec.device_id;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("config.toml".into(), config_toml(spec).into_bytes());
    files.insert(
        "install.sh".into(),
        b"#!/bin/sh\nset -eu\n# hand-made test bundle\n".to_vec(),
    );
    files.insert("README.md".into(), b"test bundle\n".to_vec());
    files.insert(
        "iotedge_config_cli_root.pem".into(),
        spec.trust_bundle_pem.clone().into_bytes(),
    );
    files.insert(
        format!("{id}.cert.pem"),
        spec.edge_ca.cert_pem.clone().into_bytes(),
    );
    files.insert(
        format!("{id}.full-chain.cert.pem"),
        format!("{}{}", spec.edge_ca.cert_pem, spec.root_pem).into_bytes(),
    );
    files.insert(
        format!("{id}.key.pem"),
        spec.edge_ca.key_pem.clone().into_bytes(),
    );
    if let TestAuth::X509(identity) = &spec.auth {
        files.insert(
            format!("{id}.hub-auth.cert.pem"),
            identity.cert_pem.clone().into_bytes(),
        );
        files.insert(
            format!("{id}.hub-auth.key.pem"),
            identity.key_pem.clone().into_bytes(),
        );
    }
    Bundle {
        device_id: id.clone(),
        origin: format!("test bundle {id}"),
        files,
    }
}
