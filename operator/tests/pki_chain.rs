//! The certificate chain, checked from the outside: `openssl verify` for every issued
//! certificate, every extension read back with x509-parser, renewal arithmetic on real
//! certificates, and every way a user's root CA can be wrong.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::pki::{
    CLOCK_SKEW_ALLOWANCE, IdentitySigner, IssuedCertificate, RootCa, RootCaError, generate_key,
    generate_root_ca, import_root_ca, inspect_certificate_pem, issue_edge_ca,
    issue_identity_certificate, issue_server_certificate, needs_renewal, renewal_time,
    sha256_thumbprint,
};
use jiff::Timestamp;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

const DAYS_90: Duration = Duration::from_secs(90 * 24 * 3600);

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

fn cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// `openssl verify -x509_strict`; panics (fails the test) if openssl is missing or says no.
fn openssl_verify(dir: &Path, trusted: &str, untrusted: Option<&str>, cert: &str, purpose: &str) {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let trusted = write("trusted.pem", trusted);
    let cert = write("cert.pem", cert);
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .arg("-x509_strict")
        .arg("-purpose")
        .arg(purpose)
        .arg("-CAfile")
        .arg(&trusted);
    if let Some(untrusted) = untrusted {
        command
            .arg("-untrusted")
            .arg(write("untrusted.pem", untrusted));
    }
    let out = command
        .arg(&cert)
        .output()
        .expect("openssl must be installed to run this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with(": OK"),
        "openssl verify failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_key_algorithm(cert: &X509Certificate<'_>, algorithm: KeyAlgorithm) {
    let spki = cert.public_key();
    match algorithm {
        KeyAlgorithm::EcdsaP256 => {
            assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap();
            assert_eq!(curve, OID_EC_P256);
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 => {
            assert_eq!(spki.algorithm.algorithm, OID_PKCS1_RSAENCRYPTION);
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                panic!("not an RSA key")
            };
            let bits = if algorithm == KeyAlgorithm::Rsa2048 {
                2048
            } else {
                4096
            };
            assert_eq!(rsa.key_size(), bits);
        }
    }
}

/// Every extension of an edge CA as docs/architecture.md ("Certificates and bundles") specifies it.
fn assert_edge_ca(edge_ca: &IssuedCertificate, root: &RootCa, device_id: &str, now: Timestamp) {
    let der = der_of(&edge_ca.cert_pem);
    let cert = parse(&der);
    let root_der = der_of(&root.cert_pem);
    let root_cert = parse(&root_der);

    assert_eq!(cn(&cert), format!("{device_id}.deviceca"));
    assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
    assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);

    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical, "basicConstraints must be critical");
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));

    let ku = cert.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "keyUsage must be critical");
    assert!(ku.value.key_cert_sign() && ku.value.digital_signature());
    assert!(!ku.value.crl_sign() && !ku.value.key_encipherment() && !ku.value.non_repudiation());
    assert!(cert.extended_key_usage().unwrap().is_none());

    let ski = subject_key_id(&cert).expect("subjectKeyIdentifier");
    let aki = authority_key_id(&cert).expect("authorityKeyIdentifier");
    assert_eq!(
        Some(aki.clone()),
        subject_key_id(&root_cert),
        "AKI must be the root's SKI"
    );
    assert_ne!(ski, aki);

    let not_before = Timestamp::from_second(cert.validity().not_before.timestamp()).unwrap();
    let not_after = Timestamp::from_second(cert.validity().not_after.timestamp()).unwrap();
    let now_s = Timestamp::from_second(now.as_second()).unwrap();
    assert_eq!(not_before, now_s.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap());
    assert_eq!(not_after, now_s.checked_add(DAYS_90).unwrap());
    assert_eq!(
        (edge_ca.not_before, edge_ca.not_after),
        (not_before, not_after)
    );

    assert_eq!(edge_ca.sha256_thumbprint, sha256_thumbprint(&der));
    assert!(edge_ca.chain_pem.starts_with(&edge_ca.cert_pem));
    assert!(edge_ca.chain_pem.ends_with(&root.cert_pem));
}

fn assert_identity(identity: &IssuedCertificate, device_id: &str, issuer: Option<&RootCa>) {
    let der = der_of(&identity.cert_pem);
    let cert = parse(&der);
    assert_eq!(cn(&cert), device_id);
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage");
    assert!(eku.value.client_auth);
    assert!(!eku.value.server_auth && !eku.value.any);
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().expect("keyUsage");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let ski = subject_key_id(&cert).expect("subjectKeyIdentifier");
    let aki = authority_key_id(&cert).expect("authorityKeyIdentifier");
    match issuer {
        None => {
            assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
            assert_eq!(aki, ski);
        }
        Some(root) => {
            let root_der = der_of(&root.cert_pem);
            let root_cert = parse(&root_der);
            assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
            assert_eq!(Some(aki), subject_key_id(&root_cert));
        }
    }
    assert_eq!(identity.sha256_thumbprint.len(), 64);
    assert!(
        identity
            .sha256_thumbprint
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    );
    assert_eq!(identity.sha256_thumbprint, sha256_thumbprint(&der));
}

/// Root, two edge CAs, identity certificates signed both ways and an edgeHub server certificate,
/// all with `algorithm`, each verified by openssl and read back.
fn full_chain_for(algorithm: KeyAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let root_key = generate_key(algorithm).unwrap();
    let root = generate_root_ca(
        "tutorial",
        &root_key,
        Duration::from_secs(3650 * 86400),
        now,
    )
    .unwrap();
    let root_cert_der = der_of(&root.cert_pem);
    let root_cert = parse(&root_cert_der);
    assert_eq!(cn(&root_cert), "tutorial root CA");
    let bc = root_cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    let ku = root_cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(subject_key_id(&root_cert).is_some());
    assert_key_algorithm(&root_cert, algorithm);
    assert!(root.info.is_ca && root.info.self_issued);

    let mut serials = Vec::new();
    for device in ["top-layer", "lower-layer"] {
        let key = generate_key(algorithm).unwrap();
        let edge_ca = issue_edge_ca(&root, device, &key, DAYS_90, now).unwrap();
        assert_edge_ca(&edge_ca, &root, device, now);
        let der = der_of(&edge_ca.cert_pem);
        assert_key_algorithm(&parse(&der), algorithm);
        serials.push(parse(&der).raw_serial().to_vec());
        openssl_verify(dir.path(), &root.cert_pem, None, &edge_ca.cert_pem, "any");
        // The full chain as the device's config points to it verifies too.
        openssl_verify(
            dir.path(),
            &root.cert_pem,
            Some(&edge_ca.chain_pem),
            &edge_ca.cert_pem,
            "any",
        );

        if device == "top-layer" {
            let server_key = generate_key(algorithm).unwrap();
            let server = issue_server_certificate(
                &edge_ca,
                "top-layer.factory.example",
                &server_key,
                DAYS_90,
                now,
            )
            .unwrap();
            openssl_verify(
                dir.path(),
                &root.cert_pem,
                Some(&edge_ca.cert_pem),
                &server.cert_pem,
                "sslserver",
            );
            let server_der = der_of(&server.cert_pem);
            let server_cert = parse(&server_der);
            assert_eq!(cn(&server_cert), "top-layer.factory.example");
            assert!(
                server_cert
                    .extended_key_usage()
                    .unwrap()
                    .unwrap()
                    .value
                    .server_auth
            );
            assert_eq!(
                server.chain_pem,
                format!("{}{}", server.cert_pem, edge_ca.cert_pem)
            );
        }
    }
    assert_ne!(serials[0], serials[1], "serial numbers must differ");

    let identity_key = generate_key(algorithm).unwrap();
    let self_signed = issue_identity_certificate(
        "lower-layer",
        &identity_key,
        IdentitySigner::SelfSigned,
        DAYS_90,
        now,
    )
    .unwrap();
    assert_identity(&self_signed, "lower-layer", None);
    assert_key_algorithm(&parse(&der_of(&self_signed.cert_pem)), algorithm);
    // A self-signed certificate is its own trust anchor.
    openssl_verify(
        dir.path(),
        &self_signed.cert_pem,
        None,
        &self_signed.cert_pem,
        "sslclient",
    );

    let root_signed = issue_identity_certificate(
        "lower-layer",
        &identity_key,
        IdentitySigner::Root(&root),
        DAYS_90,
        now,
    )
    .unwrap();
    assert_identity(&root_signed, "lower-layer", Some(&root));
    openssl_verify(
        dir.path(),
        &root.cert_pem,
        None,
        &root_signed.cert_pem,
        "sslclient",
    );
}

#[test]
fn ecdsa_p256_chain_verifies_and_has_every_extension() {
    full_chain_for(KeyAlgorithm::EcdsaP256);
}

#[test]
fn rsa_2048_chain_verifies_and_has_every_extension() {
    full_chain_for(KeyAlgorithm::Rsa2048);
}

#[test]
fn rsa_4096_edge_ca_verifies_and_has_every_extension() {
    // One RSA-4096 key only: it takes seconds to generate in a debug build.
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca(
        "tutorial",
        &root_key,
        Duration::from_secs(3650 * 86400),
        now,
    )
    .unwrap();
    let key = generate_key(KeyAlgorithm::Rsa4096).unwrap();
    let edge_ca = issue_edge_ca(&root, "top-layer", &key, DAYS_90, now).unwrap();
    assert_edge_ca(&edge_ca, &root, "top-layer", now);
    assert_key_algorithm(&parse(&der_of(&edge_ca.cert_pem)), KeyAlgorithm::Rsa4096);
    openssl_verify(dir.path(), &root.cert_pem, None, &edge_ca.cert_pem, "any");
}

#[test]
fn renewal_is_due_at_not_after_minus_renew_before() {
    let now: Timestamp = "2030-06-01T12:00:00Z".parse().unwrap();
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca("renewal", &root_key, Duration::from_secs(86400), now).unwrap();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let two_minutes = Duration::from_secs(120);
    let one_minute = Duration::from_secs(60);
    let edge_ca = issue_edge_ca(&root, "dev", &key, two_minutes, now).unwrap();

    let info = inspect_certificate_pem(&edge_ca.cert_pem).unwrap();
    assert_eq!(info.not_after, "2030-06-01T12:02:00Z".parse().unwrap());
    assert_eq!(info.not_before, "2030-06-01T11:55:00Z".parse().unwrap());
    assert_eq!(info.subject_cn.as_deref(), Some("dev.deviceca"));
    assert_eq!(info.issuer_cn.as_deref(), Some("renewal root CA"));
    assert!(info.is_ca && !info.self_issued);
    assert_eq!(
        renewal_time(info.not_after, one_minute),
        "2030-06-01T12:01:00Z".parse().unwrap()
    );

    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    assert!(!needs_renewal(&edge_ca.cert_pem, one_minute, now).unwrap());
    assert!(!needs_renewal(&edge_ca.cert_pem, one_minute, at("2030-06-01T12:00:59Z")).unwrap());
    assert!(needs_renewal(&edge_ca.cert_pem, one_minute, at("2030-06-01T12:01:00Z")).unwrap());
    assert!(needs_renewal(&edge_ca.cert_pem, one_minute, at("2030-06-01T13:00:00Z")).unwrap());
    // Issued by a clock ahead of ours: devices would reject it, so it is renewed.
    assert!(needs_renewal(&edge_ca.cert_pem, one_minute, at("2030-06-01T11:00:00Z")).unwrap());
    assert!(needs_renewal("not a certificate", one_minute, now).is_err());
}

#[test]
fn over_long_common_names_and_bad_hostnames_are_refused() {
    let now = Timestamp::now();
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca("h", &root_key, DAYS_90, now).unwrap();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    assert!(issue_edge_ca(&root, &"a".repeat(55), &key, DAYS_90, now).is_ok());
    let err = issue_edge_ca(&root, &"a".repeat(56), &key, DAYS_90, now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 55 characters"), "{err}");
    let edge_ca = issue_edge_ca(&root, "d", &key, DAYS_90, now).unwrap();
    for bad in ["", "a b", "-a.example", "a..b", "ünï"] {
        let err = issue_server_certificate(&edge_ca, bad, &key, DAYS_90, now).unwrap_err();
        assert!(err.to_string().contains("hostname"), "{bad:?}: {err}");
    }
    assert!(issue_server_certificate(&edge_ca, "10.0.0.4", &key, DAYS_90, now).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Root CA import: each bad input gets its own error, and good foreign roots work.

struct Openssl {
    dir: tempfile::TempDir,
}

impl Openssl {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl must be installed to run this test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }

    /// A self-signed certificate `cert` for key `key` with extra `-addext` values.
    fn self_signed(&self, key: &str, cert: &str, subject: &str, extensions: &[&str]) {
        let mut args = vec![
            "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "30", "-subj", subject,
        ];
        for ext in extensions {
            args.push("-addext");
            args.push(ext);
        }
        self.run(&args);
    }
}

const CA_EXTS: [&str; 2] = [
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
];

fn import_err(cert: &str, key: &str) -> RootCaError {
    import_root_ca(cert, key, Timestamp::now()).expect_err("import must fail")
}

#[test]
fn openssl_made_roots_import_and_issue_verifiable_edge_cas() {
    let ossl = Openssl::new();
    // RSA with a PKCS#1 ("RSA PRIVATE KEY") key and a PrintableString country.
    ossl.run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    ossl.run(&[
        "rsa",
        "-in",
        "rsa.pem",
        "-traditional",
        "-out",
        "rsa-pkcs1.pem",
    ]);
    ossl.self_signed(
        "rsa.pem",
        "rsa-ca.pem",
        "/C=US/O=Contoso/CN=Contoso Root",
        &CA_EXTS,
    );
    // ECDSA P-384 with a SEC1 ("EC PRIVATE KEY") key.
    ossl.run(&[
        "ecparam",
        "-genkey",
        "-name",
        "secp384r1",
        "-noout",
        "-out",
        "p384.pem",
    ]);
    ossl.self_signed(
        "p384.pem",
        "p384-ca.pem",
        "/CN=Fabrikam P-384 Root",
        &CA_EXTS,
    );

    let now = Timestamp::now();
    for (cert, key) in [
        ("rsa-ca.pem", "rsa-pkcs1.pem"),
        ("rsa-ca.pem", "rsa.pem"),
        ("p384-ca.pem", "p384.pem"),
    ] {
        let root = import_root_ca(&ossl.read(cert), &ossl.read(key), now)
            .unwrap_or_else(|e| panic!("{cert}: {e}"));
        assert!(root.key.pem().contains("PRIVATE KEY"));
        let edge_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        let edge_ca = issue_edge_ca(&root, "top-layer", &edge_key, DAYS_90, now).unwrap();
        assert_edge_ca(&edge_ca, &root, "top-layer", now);
        openssl_verify(
            ossl.dir.path(),
            &root.cert_pem,
            None,
            &edge_ca.cert_pem,
            "any",
        );
    }
}

#[test]
fn a_generated_root_imports_back_unchanged() {
    let now = Timestamp::now();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca("tutorial", &key, DAYS_90, now).unwrap();
    let again = import_root_ca(&root.cert_pem, root.key.pem(), now).unwrap();
    assert_eq!(again, root);
    // A chain in tls.crt (CA first, then its issuer) is kept whole for the trust bundle.
    let other = generate_root_ca(
        "other",
        &generate_key(KeyAlgorithm::EcdsaP256).unwrap(),
        DAYS_90,
        now,
    )
    .unwrap();
    let chained = import_root_ca(
        &format!("{}{}", root.cert_pem, other.cert_pem),
        root.key.pem(),
        now,
    )
    .unwrap();
    assert_eq!(
        chained.cert_pem,
        format!("{}{}", root.cert_pem, other.cert_pem)
    );
    assert_eq!(chained.info, root.info);
}

#[test]
fn each_bad_root_ca_gets_an_error_that_names_the_problem() {
    let ossl = Openssl::new();
    ossl.run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "key.pem",
    ]);
    ossl.run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "other.pem",
    ]);
    ossl.self_signed("key.pem", "ca.pem", "/CN=Good Root", &CA_EXTS);
    ossl.self_signed(
        "key.pem",
        "leaf.pem",
        "/CN=Not A CA",
        &["basicConstraints=critical,CA:FALSE"],
    );
    // openssl req adds the config file's basicConstraints, so rcgen makes this one.
    let no_constraints = {
        let key_pair = rcgen::KeyPair::from_pem(&ossl.read("key.pem")).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "No Constraints");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.self_signed(&key_pair).unwrap().pem()
    };
    ossl.self_signed(
        "key.pem",
        "nosign.pem",
        "/CN=Cannot Sign",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,digitalSignature",
        ],
    );
    ossl.self_signed(
        "key.pem",
        "pathlen0.pem",
        "/CN=Path Zero",
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,keyCertSign",
        ],
    );
    ossl.run(&[
        "pkey",
        "-in",
        "key.pem",
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        "encrypted.pem",
    ]);
    ossl.run(&[
        "ec",
        "-in",
        "key.pem",
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        "legacy-encrypted.pem",
    ]);
    ossl.run(&["genpkey", "-algorithm", "ED25519", "-out", "ed.pem"]);
    ossl.self_signed("ed.pem", "ed-ca.pem", "/CN=Edwards Root", &CA_EXTS);
    ossl.run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        "rsa1024.pem",
    ]);
    ossl.self_signed("rsa1024.pem", "rsa1024-ca.pem", "/CN=Short Root", &CA_EXTS);
    ossl.run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "key.pem",
        "-out",
        "multi.pem",
        "-days",
        "30",
        "-multivalue-rdn",
        "-subj",
        "/CN=Multi+O=Valued",
        "-addext",
        CA_EXTS[0],
        "-addext",
        CA_EXTS[1],
    ]);

    let key = ossl.read("key.pem");
    let ca = ossl.read("ca.pem");
    assert!(
        import_root_ca(&ca, &key, Timestamp::now()).is_ok(),
        "the good root must import"
    );

    let key_body = key.lines().nth(1).unwrap().to_string();
    let check = |err: RootCaError, expected: fn(&RootCaError) -> bool, words: &[&str]| {
        assert!(expected(&err), "unexpected error {err:?}");
        let message = err.to_string();
        for word in words {
            assert!(message.contains(word), "{message:?} lacks {word:?}");
        }
        assert!(!message.contains(&key_body), "key material in {message:?}");
        assert!(!message.contains("-----END"), "PEM in {message:?}");
    };

    check(
        import_err(&ossl.read("leaf.pem"), &key),
        |e| matches!(e, RootCaError::NotCa { .. }),
        &["not a CA", "CA:FALSE", "Not A CA"],
    );
    check(
        import_err(&no_constraints, &key),
        |e| matches!(e, RootCaError::NotCa { .. }),
        &["no basicConstraints"],
    );
    check(
        import_err(&ossl.read("nosign.pem"), &key),
        |e| matches!(e, RootCaError::NotCa { .. }),
        &["keyCertSign"],
    );
    check(
        import_err(&ossl.read("pathlen0.pem"), &key),
        |e| matches!(e, RootCaError::PathLengthTooShort { .. }),
        &["pathLenConstraint 0"],
    );
    check(
        import_err(&ca, &ossl.read("other.pem")),
        |e| matches!(e, RootCaError::KeyMismatch { .. }),
        &["does not belong", "Good Root"],
    );
    check(
        import_err(&ca, &ossl.read("encrypted.pem")),
        |e| matches!(e, RootCaError::EncryptedKey { .. }),
        &["encrypted", "ENCRYPTED PRIVATE KEY"],
    );
    check(
        import_err(&ca, &ossl.read("legacy-encrypted.pem")),
        |e| matches!(e, RootCaError::EncryptedKey { .. }),
        &["encrypted", "Proc-Type"],
    );
    check(
        import_err(&ossl.read("ed-ca.pem"), &ossl.read("ed.pem")),
        |e| matches!(e, RootCaError::UnsupportedAlgorithm { .. }),
        &["Ed25519"],
    );
    check(
        import_err(&ossl.read("rsa1024-ca.pem"), &ossl.read("rsa1024.pem")),
        |e| matches!(e, RootCaError::UnsupportedAlgorithm { .. }),
        &["RSA with 1024 bits"],
    );
    check(
        import_err(&ossl.read("multi.pem"), &key),
        |e| matches!(e, RootCaError::UnsupportedSubject { .. }),
        &["multi-valued"],
    );

    check(
        import_err("", &key),
        |e| matches!(e, RootCaError::MissingCertificate),
        &["tls.crt", "no PEM certificate"],
    );
    check(
        import_err("garbage, not PEM", &key),
        |e| matches!(e, RootCaError::MissingCertificate),
        &["tls.crt"],
    );
    check(
        import_err(&key, &key),
        |e| matches!(e, RootCaError::MissingCertificate),
        &["tls.crt"],
    );
    check(
        import_err(
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
            &key,
        ),
        |e| matches!(e, RootCaError::MalformedCertificate { .. }),
        &["tls.crt", "malformed PEM"],
    );
    check(
        import_err(
            "-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n",
            &key,
        ),
        |e| matches!(e, RootCaError::MalformedCertificate { .. }),
        &["not an X.509 certificate"],
    );
    check(
        import_err(&ca, ""),
        |e| matches!(e, RootCaError::MissingKey),
        &["tls.key", "no PEM private key"],
    );
    check(
        import_err(&ca, &ca),
        |e| matches!(e, RootCaError::MissingKey),
        &["tls.key"],
    );
    check(
        import_err(
            &ca,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        ),
        |e| matches!(e, RootCaError::MalformedKey { .. }),
        &["tls.key", "not an RSA or ECDSA key"],
    );

    // Validity, with roots the operator makes at chosen times.
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let old = generate_root_ca(
        "old",
        &root_key,
        Duration::from_secs(86400),
        "2001-01-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap();
    check(
        import_err(&old.cert_pem, root_key.pem()),
        |e| matches!(e, RootCaError::Expired { .. }),
        &["expired at 2001-01-02"],
    );
    let future = generate_root_ca(
        "future",
        &root_key,
        Duration::from_secs(86400),
        "2999-01-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap();
    check(
        import_err(&future.cert_pem, root_key.pem()),
        |e| matches!(e, RootCaError::NotYetValid { .. }),
        &["not valid before 2998-12-31"],
    );
}
