//! PEM framing: finding certificates and private keys in text a user or a Secret supplied.

/// The DER bytes of every `CERTIFICATE` block in `text`, in order. `Err` carries a reason without
/// the input.
pub(crate) fn certificate_blocks(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("malformed PEM: {e}"))?;
    Ok(blocks
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| block.into_contents())
        .collect())
}

/// What a private key PEM text holds.
pub(crate) enum KeyBlock {
    /// An unencrypted key: DER and PEM label (`PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
    Plain { der: Vec<u8>, label: String },
    /// An encrypted key; the marker says how it was recognised.
    Encrypted { marker: &'static str },
    /// No private key block at all.
    Missing,
    /// Framing or base64 is broken.
    Malformed { reason: String },
}

/// Finds the private key in `text`. Encryption is recognised before parsing, so a passphrase
/// protected key gets its own message rather than a parse error.
pub(crate) fn private_key_block(text: &str) -> KeyBlock {
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return KeyBlock::Encrypted {
            marker: "ENCRYPTED PRIVATE KEY",
        };
    }
    // Traditional OpenSSL encryption: `Proc-Type: 4,ENCRYPTED` header inside the block.
    if text
        .lines()
        .any(|line| line.trim_start().starts_with("Proc-Type:") && line.contains("ENCRYPTED"))
    {
        return KeyBlock::Encrypted {
            marker: "Proc-Type: 4,ENCRYPTED",
        };
    }
    let blocks = match pem::parse_many(text) {
        Ok(blocks) => blocks,
        Err(e) => {
            return KeyBlock::Malformed {
                reason: format!("malformed PEM: {e}"),
            };
        }
    };
    match blocks
        .into_iter()
        .find(|block| block.tag().ends_with("PRIVATE KEY"))
    {
        Some(block) => KeyBlock::Plain {
            label: block.tag().to_string(),
            der: block.into_contents(),
        },
        None => KeyBlock::Missing,
    }
}

/// PEM text of one DER certificate, with `\n` line endings.
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// `text` with exactly one trailing newline, so concatenated PEM files stay well formed.
pub(crate) fn with_trailing_newline(text: &str) -> String {
    let mut out = text.trim_end().to_string();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_certificates_and_skips_other_blocks_and_text() {
        let text = format!(
            "junk before\n{}{}",
            certificate_pem(b"first"),
            pem::encode(&pem::Pem::new("PRIVATE KEY", b"k".to_vec()))
        ) + &certificate_pem(b"second");
        let blocks = certificate_blocks(&text).unwrap();
        assert_eq!(blocks, vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn classifies_key_texts() {
        let plain = pem::encode(&pem::Pem::new("EC PRIVATE KEY", b"k".to_vec()));
        assert!(
            matches!(private_key_block(&plain), KeyBlock::Plain { der, label } if der == b"k" && label == "EC PRIVATE KEY")
        );
        let pkcs8_encrypted = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", b"k".to_vec()));
        assert!(matches!(
            private_key_block(&pkcs8_encrypted),
            KeyBlock::Encrypted {
                marker: "ENCRYPTED PRIVATE KEY"
            }
        ));
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,0011\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            private_key_block(legacy),
            KeyBlock::Encrypted {
                marker: "Proc-Type: 4,ENCRYPTED"
            }
        ));
        assert!(matches!(
            private_key_block("no pem here"),
            KeyBlock::Missing
        ));
        assert!(matches!(private_key_block(""), KeyBlock::Missing));
        assert!(matches!(
            private_key_block(&certificate_pem(b"c")),
            KeyBlock::Missing
        ));
        let broken = "-----BEGIN PRIVATE KEY-----\n!!!not base64!!!\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            private_key_block(broken),
            KeyBlock::Malformed { .. }
        ));
    }
}
