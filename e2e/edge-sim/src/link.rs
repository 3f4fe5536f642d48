//! The TLS link between a child and its parent: each Edge device serves its "edgeHub + API
//! proxy" endpoint on 127.0.0.1 with a certificate from its own edge CA; a child connects with
//! only its bundle's trust bundle as roots and verifies the parent's hostname. Over the link
//! travel one JSON request and one JSON reply per connection (a stand-in for AMQP/MQTT).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::ServerIdentity;

/// Longest request or reply line accepted.
const MAX_LINE: usize = 1 << 20;
/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a child sends its parent.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Request {
    /// The child's edgeHub connects (recorded in the parent's `$edgeHub` clients).
    #[serde(rename_all = "camelCase")]
    Connect {
        /// The child's device id.
        device_id: String,
    },
    /// A telemetry message travelling up to the hub.
    #[serde(rename_all = "camelCase")]
    Telemetry {
        /// The device that produced it.
        device_id: String,
        /// Its module.
        module_id: String,
        /// The sender's device SAS token (absent for X509 senders).
        token: Option<String>,
        /// The message.
        body: Value,
        /// Devices it passed through so far (sender first).
        hops: Vec<String>,
    },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { device_id } => f
                .debug_struct("Connect")
                .field("device_id", device_id)
                .finish(),
            Self::Telemetry {
                device_id,
                module_id,
                token,
                hops,
                ..
            } => f
                .debug_struct("Telemetry")
                .field("device_id", device_id)
                .field("module_id", module_id)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .field("hops", hops)
                .finish(),
        }
    }
}

/// The parent's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// Accepted (for telemetry: delivered to the hub).
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// Success.
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
        }
    }
    /// Failure with a reason.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
        }
    }
}

/// Handles the requests a device's server receives.
pub trait LinkHandler: Send + Sync + 'static {
    /// Answers one request from the peer at `peer`.
    fn handle(&self, request: Request) -> BoxFuture<'_, Reply>;
}

/// A running server; dropping it stops accepting.
pub struct LinkServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for LinkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a TLS server on 127.0.0.1 (free port) presenting `identity`.
pub async fn serve(
    identity: &ServerIdentity,
    handler: Arc<dyn LinkHandler>,
) -> anyhow::Result<LinkServer> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.private_key())?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    EXCHANGE_TIMEOUT * 3,
                    serve_one(acceptor, stream, handler),
                )
                .await;
            });
        }
    });
    Ok(LinkServer { addr, task })
}

async fn serve_one(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    handler: Arc<dyn LinkHandler>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(stream).await?;
    let mut reader = BufReader::new(tls);
    let line = read_line(&mut reader).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handler.handle(request).await,
        Err(e) => Reply::failed(format!("malformed request ({e})")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    let stream = reader.get_mut();
    stream.write_all(&out).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, MAX_LINE as u64);
    limited.read_until(b'\n', &mut buf).await?;
    if buf.is_empty() {
        anyhow::bail!("the peer closed the connection without a message");
    }
    Ok(String::from_utf8(buf)?)
}

/// Why an exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// TCP failed (or nothing answered): the link is down.
    #[error("{0}")]
    Connect(String),
    /// TCP connected and the TLS handshake failed (the parent's chain or name did not verify
    /// against the trust bundle, or the parent refused).
    #[error("{0}")]
    Handshake(String),
    /// The link works but the exchange broke off.
    #[error("{0}")]
    Exchange(String),
}

/// Opens TLS to `addr` trusting only `trust_roots`, verifying `hostname`, sends `request` and
/// reads the reply.
pub async fn exchange(
    trust_roots: &[CertificateDer<'static>],
    hostname: &str,
    addr: SocketAddr,
    request: &Request,
) -> Result<Reply, LinkError> {
    let connect = async {
        let mut roots = RootCertStore::empty();
        for root in trust_roots {
            roots.add(root.clone()).map_err(|e| {
                LinkError::Connect(format!("a trust bundle certificate is unusable ({e})"))
            })?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LinkError::Connect(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(hostname.to_string()).map_err(|e| {
            LinkError::Connect(format!("hostname {hostname:?} is not a server name ({e})"))
        })?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            LinkError::Connect(format!("TCP connect to {hostname} ({addr}) failed: {e}"))
        })?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                LinkError::Handshake(format!("TLS handshake with {hostname} failed: {e}"))
            })?;
        let mut reader = BufReader::new(tls);
        let mut line =
            serde_json::to_vec(request).map_err(|e| LinkError::Exchange(e.to_string()))?;
        line.push(b'\n');
        reader
            .get_mut()
            .write_all(&line)
            .await
            .map_err(|e| LinkError::Exchange(format!("sending to {hostname} failed: {e}")))?;
        let answer = read_line(&mut reader).await.map_err(|e| {
            LinkError::Exchange(format!("reading the answer of {hostname} failed: {e}"))
        })?;
        serde_json::from_str::<Reply>(&answer).map_err(|e| {
            LinkError::Exchange(format!(
                "{hostname} answered something that is not a reply ({e})"
            ))
        })
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(LinkError::Connect(format!(
                "{hostname} ({addr}) did not answer within {EXCHANGE_TIMEOUT:?}"
            )))
        })
}
