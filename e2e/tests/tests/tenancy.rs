//! Fair sharing between tenants (docs/tenancy.md): four hierarchies whose hubs take connections
//! and never answer (or answer a byte a second) hold the operator's four reconcile slots, a
//! fifth hub streams an endless body, and a hierarchy on the emulator beside them still reaches
//! Ready; the hung ones end with `Ready=False, reason=HubUnreachable` naming the time budget,
//! and the operator's memory stays under a bound while the endless body streams.
//!
//! The fake hubs are TLS servers on 127.0.0.1 with a CA of their own, trusted through each
//! hierarchy's `caSecretRef`, the way a tenant would point a hierarchy at a server it runs.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::{Env, hierarchy_yaml};
use e2e_harness::wait_until;

/// What a fake hub does with each connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Accepts the TCP connection and never reads or writes (no TLS handshake).
    Silent,
    /// Completes TLS, reads the request, never answers.
    Hang,
    /// Completes TLS, sends the status line and headers, then one byte of body a second.
    Trickle,
    /// Completes TLS and streams a chunked JSON body of `ENDLESS_BYTES` as fast as it is read.
    Endless,
}

/// How much one answer of the endless hub would be if read to its end: far more than the
/// operator's cap (64 MiB) and than the bound asserted below.
const ENDLESS_BYTES: usize = 2 * 1024 * 1024 * 1024;

/// How far the operator's peak resident memory may rise above what it was before the endless
/// hub's hierarchy was applied: a reconcile may read two list answers at once (its device query
/// and, with deployments, its configuration list, side by side), each cut at 64 MiB, and a
/// growing buffer may briefly hold twice its length. Reading one answer of `ENDLESS_BYTES` to its end would
/// alone pass it eightfold.
const MEMORY_RISE_BOUND_MIB: u64 = 2 * 64 * 2;

struct FakeHub {
    port: u16,
    ca_pem: String,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Body bytes written (Endless, Trickle).
    written: Arc<AtomicUsize>,
}

impl FakeHub {
    /// A TLS server for `localhost` on 127.0.0.1, one thread per connection (they end when the
    /// test process does).
    fn start(behaviour: Behaviour) -> anyhow::Result<FakeHub> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tenant's own hub CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])?
            .signed_by(&leaf_key, &ca)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)?,
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicUsize::new(0));
        let (accepted, bytes) = (connections.clone(), written.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (config, bytes) = (config.clone(), bytes.clone());
                std::thread::spawn(move || serve(stream, config, behaviour, &bytes));
            }
        });
        Ok(FakeHub {
            port,
            ca_pem: ca.pem(),
            connections,
            written,
        })
    }

    fn connection_string(&self) -> String {
        format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            self.port
        )
    }
}

fn serve(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    behaviour: Behaviour,
    written: &AtomicUsize,
) {
    if behaviour == Behaviour::Silent {
        // Hold the connection open without a byte until the client gives up.
        let mut sink = [0u8; 1];
        let _ = tcp.read(&mut sink);
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    // Read up to the end of the request headers (the body, if any, stays in the socket).
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    match behaviour {
        Behaviour::Silent => {}
        Behaviour::Hang => {
            // Keep the connection; the client's timeouts end it.
            while let Ok(n) = tls.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
        Behaviour::Trickle => {
            if tls.write_all(head.as_bytes()).is_err() {
                return;
            }
            loop {
                if tls
                    .write_all(b"1\r\n \r\n")
                    .and_then(|_| tls.flush())
                    .is_err()
                {
                    return;
                }
                written.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Behaviour::Endless => {
            if tls.write_all(head.as_bytes()).is_err() {
                return;
            }
            const CHUNK: usize = 1024 * 1024;
            let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
            chunk.push(b'[');
            chunk.extend(std::iter::repeat_n(b' ', CHUNK - 1));
            chunk.extend_from_slice(b"\r\n");
            let mut sent = 0;
            while sent < ENDLESS_BYTES {
                if tls.write_all(&chunk).is_err() {
                    return;
                }
                sent += CHUNK;
                written.fetch_add(CHUNK, Ordering::Relaxed);
                // Only the first chunk opens the array; the rest is whitespace inside it.
                chunk[format!("{CHUNK:x}\r\n").len()] = b' ';
            }
            let _ = tls.write_all(b"1\r\n]\r\n0\r\n\r\n");
        }
    }
}

/// VmHWM and VmRSS of a process, in MiB, from /proc/PID/status.
fn memory_mib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib / 1024)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// A namespace whose hub Secrets point at `hub`.
async fn tenant_namespace(env: &Env, namespace: &str, hub: &FakeHub) -> anyhow::Result<()> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(env.client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))?;
    namespaces.create(&Default::default(), &ns).await?;
    env.put_secret(
        namespace,
        "iothub-service",
        "connectionString",
        &hub.connection_string(),
    )
    .await?;
    env.put_secret(namespace, "iothub-ca", "ca.crt", &hub.ca_pem)
        .await
}

fn devices(prefix: &str) -> String {
    format!(
        "    - {{id: {prefix}-gw}}\n    - {{id: {prefix}-sensor, parent: {prefix}-gw, type: Leaf}}\n"
    )
}

/// Waits until the hierarchy shows `Ready=False, reason=HubUnreachable`; returns its message.
async fn wait_unreachable(env: &Env, namespace: &str, name: &str) -> anyhow::Result<String> {
    let api = env.hierarchies(namespace);
    // One call's budget (90 s) and the status write, on a busy machine.
    wait_until(
        Duration::from_secs(240),
        Duration::from_secs(1),
        &format!("{namespace}/{name} to be Ready=False HubUnreachable"),
        || async {
            let h = api.get(name).await.ok()?;
            let ready = h
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False" && ready.reason == "HubUnreachable").then_some(ready.message)
        },
    )
    .await
    .with_context(|| env.describe(namespace, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_hostile_hubs_do_not_stall_a_healthy_tenant() -> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    let pid = env.operator.process.pid();
    let hung = [
        ("hung-silent", Behaviour::Silent),
        ("hung-hang-a", Behaviour::Hang),
        ("hung-hang-b", Behaviour::Hang),
        ("hung-trickle", Behaviour::Trickle),
    ];
    let mut hubs = Vec::new();
    for (name, behaviour) in hung {
        let hub = FakeHub::start(behaviour)?;
        tenant_namespace(&env, name, &hub).await?;
        env.apply(name, &hierarchy_yaml(name, "", &devices(name)))
            .await?;
        hubs.push((name, hub));
    }
    // Every reconcile slot is taken: each hung hub has been called.
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        "each hung hub to have been called",
        || async {
            hubs.iter()
                .all(|(_, hub)| hub.connections.load(Ordering::Relaxed) > 0)
                .then_some(())
        },
    )
    .await?;
    let (baseline_hwm, baseline_rss) = memory_mib(pid)?;
    eprintln!("with four hung hubs: operator VmHWM {baseline_hwm} MiB, VmRSS {baseline_rss} MiB");

    // A hub that streams an endless body, and the healthy tenant on the emulator.
    let endless = FakeHub::start(Behaviour::Endless)?;
    tenant_namespace(&env, "endless", &endless).await?;
    env.apply(
        "endless",
        &hierarchy_yaml("endless", "", &devices("endless")),
    )
    .await?;
    env.namespace("healthy").await?;
    let started = Instant::now();
    env.apply(
        "healthy",
        &hierarchy_yaml("healthy", "", &devices("healthy")),
    )
    .await?;
    env.wait_condition("healthy", "healthy", "Ready", "True")
        .await?;
    eprintln!(
        "the healthy hierarchy was Ready {:?} after it was applied, beside four hung hubs",
        started.elapsed()
    );
    common::assert_hub_matches(&env, "healthy", "healthy").await?;

    // Each hung hierarchy ended its reconcile with a clear condition, not by holding its slot.
    for (name, hub) in &hubs {
        let message = wait_unreachable(&env, name, name).await?;
        eprintln!(
            "{name}: {} connections; Ready=False HubUnreachable: {message}",
            hub.connections.load(Ordering::Relaxed)
        );
        ensure!(
            message.contains(&format!("localhost:{}", hub.port)),
            "{name}: the message names the hub: {message}"
        );
        // Whether the call's budget or its retries ran out first depends on timing; either
        // way the message says the hub did not answer in time.
        ensure!(
            message.contains("time budget") || message.contains("timed out"),
            "{name}: the message says the hub did not answer in time: {message}"
        );
    }
    let message = wait_unreachable(&env, "endless", "endless").await?;
    ensure!(
        message.contains("64 MiB") && message.contains(&format!("localhost:{}", endless.port)),
        "the endless hub's hierarchy names the cap and the hub: {message}"
    );

    // Its hierarchy is retried (every 30 s): let a second reconcile read the endless hub too,
    // so the bound holds over repeated reads, not only the first.
    let first_reads = endless.connections.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(180),
        Duration::from_secs(1),
        "the endless hub to be called again",
        || async { (endless.connections.load(Ordering::Relaxed) > first_reads).then_some(()) },
    )
    .await?;
    // The retry's reads run to the cap within seconds; let them end.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (hwm, rss) = memory_mib(pid)?;
    let streamed = endless.written.load(Ordering::Relaxed) >> 20;
    let answers = endless.connections.load(Ordering::Relaxed);
    let bound = baseline_hwm + MEMORY_RISE_BOUND_MIB;
    eprintln!(
        "the endless hub streamed {streamed} MiB over {answers} connections; operator VmHWM {hwm} MiB (bound {bound} MiB = {baseline_hwm} before + {MEMORY_RISE_BOUND_MIB}), VmRSS {rss} MiB"
    );
    ensure!(
        streamed > 64 * 2,
        "the endless hub streamed only {streamed} MiB: the operator did not read its answers"
    );
    ensure!(
        hwm <= bound,
        "the operator's peak memory {hwm} MiB passed {bound} MiB"
    );
    // The healthy hierarchy is still Ready after all of that.
    let h = env.hierarchies("healthy").get("healthy").await?;
    let ready = common::condition(&h, "Ready")?;
    ensure!(ready.status == "True", "healthy: {ready:?}");
    Ok(())
}
