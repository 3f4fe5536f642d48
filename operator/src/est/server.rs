//! The HTTPS side: TLS with optional client certificates (checked by [`super::authorize`], not
//! by the handshake, so a refusal is an HTTP answer with a reason, a metric and an Event), the
//! two EST operations devices use, and the hub write that must precede an X509 identity's answer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jiff::Timestamp;
use kube::Resource;
use kube::runtime::events::EventType;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{info, warn};

use super::EstState;
use super::authorize::{Profile, Refusal, authenticate, authorize, hierarchy_of};
use super::enroll::issue;
use super::wire::{PKCS7_CERTS_ONLY, certs_only, parse_request};
use crate::api::AuthenticationType;
use crate::iothub::X509Thumbprint;
use crate::pki::{ThumbprintPair, certificate_ders, rotate_thumbprints};

/// Where EST lives on the server (RFC 7030, section 3.2.2).
pub const EST_PATH: &str = "/.well-known/est";

/// The leaf certificate the client presented in the TLS handshake, if any.
#[derive(Clone, Debug)]
struct PeerCertificate(Option<Vec<u8>>);

/// Serves EST on `addr` until `shutdown` completes. No connection outlives it: those still open
/// are closed, so no enrollment writes to the hub after this replica stopped leading.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<EstState>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let Some(listener) = bind_until(addr, BIND_RETRY, &mut shutdown).await? else {
        info!("EST server stopped before it could listen");
        return Ok(());
    };
    info!(address = %listener.local_addr()?, url = %state.endpoint.url, "serving EST");
    let acceptor = tokio_rustls::TlsAcceptor::from(state.tls.clone());
    let app = router(state);
    accept_until(listener, shutdown, move |tcp, peer| {
        let (acceptor, app) = (acceptor.clone(), app.clone());
        async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "EST: TLS handshake failed");
                    return;
                }
            };
            let presented = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| c.as_ref().to_vec());
            let app = app.layer(Extension(PeerCertificate(presented)));
            let service = hyper::service::service_fn(move |request| app.clone().oneshot(request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "EST: connection ended with an error");
            }
        }
    })
    .await;
    info!("EST server stopped");
    Ok(())
}

/// How often a taken port is tried again.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Listens on `addr`. A port in use is tried again every `retry` until `shutdown` (then `None`):
/// a new leader sharing a network with the one before (replicas in the node's network) may start
/// while the previous holder still closes its listener. Any other error is final.
async fn bind_until(
    addr: SocketAddr,
    retry: std::time::Duration,
    mut shutdown: impl Future<Output = ()> + Unpin,
) -> anyhow::Result<Option<TcpListener>> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(Some(listener)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                warn!(address = %addr, retry_in_secs = retry.as_secs_f64(), "EST port in use (a previous leader still closing?); trying again");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = &mut shutdown => return Ok(None),
                }
            }
            Err(e) => {
                anyhow::bail!("cannot listen on {addr} for EST: {e}; choose another --est-addr")
            }
        }
    }
}

/// Accepts connections until `shutdown`, each handled by `handle` in a task of this term; then
/// stops listening, aborts the connections still open and waits until they are gone.
async fn accept_until<H, F>(listener: TcpListener, shutdown: impl Future<Output = ()>, handle: H)
where
    H: Fn(tokio::net::TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(handle(tcp, peer));
                }
                Err(e) => warn!(error = %e, "EST: accept failed"),
            },
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn router(state: Arc<EstState>) -> Router {
    Router::new()
        .route(&format!("{EST_PATH}/cacerts"), get(cacerts))
        .route(&format!("{EST_PATH}/simpleenroll"), post(enroll))
        // aziot-certd never re-enrolls (a renewal is a fresh simpleenroll); other clients may,
        // and the same rules apply.
        .route(&format!("{EST_PATH}/simplereenroll"), post(enroll))
        .with_state(state)
}

async fn cacerts(
    State(state): State<Arc<EstState>>,
    Extension(peer): Extension<PeerCertificate>,
) -> Response {
    state.metrics.request("cacerts");
    let (snapshot, client) = match state.authenticated(peer.0.as_deref()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let entry = &snapshot.entries[client.hierarchy];
    match certificate_ders(&entry.root.cert_pem)
        .map_err(|e| e.to_string())
        .and_then(|ders| certs_only(&ders))
    {
        Ok(body) => pkcs7_response(body),
        Err(e) => internal_error(&e),
    }
}

async fn enroll(
    State(state): State<Arc<EstState>>,
    Extension(peer): Extension<PeerCertificate>,
    body: Bytes,
) -> Response {
    state.metrics.request("simpleenroll");
    let (snapshot, client) = match state.authenticated(peer.0.as_deref()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let entry = &snapshot.entries[client.hierarchy];
    let refuse = |refusal: Refusal| state.refuse(Some(entry), Some(&client.device_id), refusal);
    if !state.limiter.allow(&format!(
        "{}/{}",
        snapshot.trust[client.hierarchy].namespace, client.device_id
    )) {
        return refuse(Refusal::RateLimited {
            device: client.device_id.clone(),
        })
        .await;
    }
    let request = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => return refuse(Refusal::BadRequest(e)).await,
    };
    let profile = match authorize(&client, &snapshot.trust, &request.common_name) {
        Ok(p) => p,
        Err(refusal) => return refuse(refusal).await,
    };
    let now = Timestamp::now();
    let (root, id, key, validity) = (
        entry.root.clone(),
        client.device_id.clone(),
        request.public_key.clone(),
        entry.validity,
    );
    let enrolled =
        match tokio::task::spawn_blocking(move || issue(&root, &id, profile, &key, validity, now))
            .await
        {
            Ok(Ok(enrolled)) => enrolled,
            Ok(Err(e)) => return internal_error(&e.to_string()),
            Err(e) => return internal_error(&e.to_string()),
        };
    // Recorded first: from then on the reconcile keeps both the new and the presented
    // thumbprint registered, so it cannot undo the hub write below.
    let recorded = state
        .record(
            entry,
            &client.device_id,
            profile,
            &enrolled,
            &client.thumbprint,
            now,
        )
        .await;
    if let Err(e) = &recorded {
        warn!(device = %client.device_id, error = %e, "EST: the enrollment was not recorded");
    }
    if profile == Profile::Identity && entry.object.spec.authentication == AuthenticationType::X509
    {
        let registered = match recorded {
            Ok(()) => {
                state
                    .register_thumbprint(
                        entry,
                        &client.device_id,
                        &client.thumbprint,
                        &enrolled.sha256_thumbprint,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            // Answering now would hand out a certificate the hub rejects: the device retries.
            warn!(device = %client.device_id, error = %e, "EST: could not register the new identity thumbprint");
            state.metrics.refusal("hub-unavailable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "30")],
                "the identity's thumbprint could not be registered in IoT Hub; retry later\n",
            )
                .into_response();
        }
    }
    state.metrics.enrolled(profile);
    state
        .announce(entry, &client.device_id, profile, &enrolled)
        .await;
    match certs_only(std::slice::from_ref(&enrolled.der)) {
        Ok(body) => pkcs7_response(body),
        Err(e) => internal_error(&e),
    }
}

impl EstState {
    /// The snapshot and client of an accepted certificate, or the refusal's response. An
    /// unknown issuer or device re-reads the trust once: it may have been created a moment ago.
    async fn authenticated(
        &self,
        presented: Option<&[u8]>,
    ) -> Result<(Arc<super::trust::Snapshot>, super::authorize::Client), Response> {
        let mut stale_ok = true;
        loop {
            let snapshot = match self.trust.snapshot(stale_ok).await {
                Ok(s) => s,
                Err(e) => return Err(internal_error(&format!("reading hierarchies: {e}"))),
            };
            match authenticate(presented, &snapshot.trust, Timestamp::now()) {
                Ok(client) => return Ok((snapshot, client)),
                Err(Refusal::UnknownIssuer { .. } | Refusal::UnknownDevice { .. }) if stale_ok => {
                    stale_ok = false;
                }
                Err(refusal) => {
                    let entry = presented
                        .and_then(|der| hierarchy_of(der, &snapshot.trust))
                        .map(|i| &snapshot.entries[i]);
                    return Err(self.refuse(entry, None, refusal).await);
                }
            }
        }
    }

    /// Counts, logs and (when the hierarchy is known) publishes a refusal; its answer.
    async fn refuse(
        &self,
        entry: Option<&super::trust::HierarchyEntry>,
        device: Option<&str>,
        refusal: Refusal,
    ) -> Response {
        self.metrics.refusal(refusal.reason());
        warn!(device = device.unwrap_or("-"), reason = refusal.reason(), detail = %refusal, "EST request refused");
        if let Some(entry) = entry {
            let regarding = entry.object.object_ref(&());
            if let Err(e) = self
                .events
                .publish(
                    &regarding,
                    EventType::Warning,
                    "EstRefused",
                    "Enroll",
                    refusal.to_string(),
                )
                .await
            {
                warn!(error = %e, "could not publish event");
            }
        }
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
        (status, format!("{refusal}\n")).into_response()
    }

    /// Registers `new` next to the thumbprint the device authenticates with now, before the
    /// device gets the certificate (the slot not in use; see `pki::rotate_thumbprints`).
    async fn register_thumbprint(
        &self,
        entry: &super::trust::HierarchyEntry,
        device_id: &str,
        presented: &str,
        new: &str,
    ) -> anyhow::Result<()> {
        let hub = self.hubs.client_for(&entry.object).await?;
        let mut device = hub.get_device(device_id).await?;
        let auth = device.authentication.get_or_insert_with(Default::default);
        let registered = auth.x509_thumbprint.clone().unwrap_or_default();
        let current = ThumbprintPair {
            primary: registered.primary_thumbprint.clone(),
            secondary: registered.secondary_thumbprint.clone(),
        };
        // The certificate the device connects to the hub with is the one it presents here
        // (bootstrap or EST identity); keep that one registered.
        let in_use = current.contains(presented).then_some(presented);
        let wanted = rotate_thumbprints(&current, in_use.or(current.primary.as_deref()), new);
        if wanted == current {
            return Ok(());
        }
        auth.x509_thumbprint = Some(X509Thumbprint {
            primary_thumbprint: wanted.primary,
            secondary_thumbprint: wanted.secondary,
        });
        let etag = device.etag.clone();
        hub.create_or_update_device(&device, Some(etag.as_deref().unwrap_or("*")))
            .await?;
        Ok(())
    }
}

fn pkcs7_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PKCS7_CERTS_ONLY),
    );
    headers.insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    response
}

fn internal_error(reason: &str) -> Response {
    warn!(%reason, "EST request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the EST server could not answer; see the operator's log\n",
    )
        .into_response()
}

/// Asks every client for a certificate but lets the handshake through with any (or none): the
/// proof of possession is checked here, the chain by [`authenticate`], which knows the
/// hierarchies' roots as they are now and can say why it refuses.
#[derive(Debug)]
pub(super) struct AnyClientCertificate {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    pub(super) fn new() -> Self {
        Self {
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port taken at the start of a term is tried again until it is free, and given up when
    /// the term ends first.
    #[tokio::test]
    async fn a_taken_port_is_tried_again_until_free_or_the_term_ends() {
        let retry = std::time::Duration::from_millis(50);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let gave_up = tokio::spawn(async move {
            bind_until(
                addr,
                retry,
                Box::pin(async {
                    let _ = stop.await;
                }),
            )
            .await
        });
        tokio::time::sleep(retry * 4).await;
        assert!(!gave_up.is_finished(), "gave up while the term lasted");
        stop_tx.send(()).unwrap();
        assert!(
            gave_up.await.unwrap().unwrap().is_none(),
            "bound a taken port"
        );

        let waiting = tokio::spawn(bind_until(addr, retry, std::future::pending::<()>()));
        tokio::time::sleep(retry * 3).await;
        drop(taken);
        let bound = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("never bound the freed port")
            .unwrap()
            .unwrap()
            .expect("a listener");
        assert_eq!(bound.local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn other_bind_errors_are_final_and_name_the_flag() {
        // 192.0.2.1 (TEST-NET) is on no interface here: not "in use", so no retry.
        let error = bind_until(
            "192.0.2.1:0".parse().unwrap(),
            std::time::Duration::from_millis(10),
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("choose another --est-addr"), "{error}");
    }

    /// A connection open when the term ends is closed with it: its handler is dropped before
    /// `accept_until` returns, and nothing listens afterwards.
    #[tokio::test]
    async fn no_connection_outlives_the_term() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (alive_tx, mut alive) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept_until(
            listener,
            async {
                let _ = stop.await;
            },
            move |_tcp, _peer| {
                let (started, alive) = (started_tx.clone(), alive_tx.clone());
                async move {
                    // Held until the handler is dropped: the receiver sees the channel close.
                    let _alive = alive;
                    let _ = started.send(());
                    std::future::pending::<()>().await;
                }
            },
        ));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        started.recv().await.unwrap();
        stop_tx.send(()).unwrap();
        server.await.unwrap();
        // The handler's sender was dropped with its task (only clones in the closure remained,
        // and the closure went with `accept_until`).
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), alive.recv()).await;
        assert!(matches!(closed, Ok(None)), "the handler outlived the term");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after the term"
        );
    }
}
