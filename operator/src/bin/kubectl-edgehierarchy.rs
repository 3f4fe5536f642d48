//! `kubectl edgehierarchy`: a kubectl plugin to look at hierarchies, take device bundles out, and
//! import the configs of the tools people come from.

use clap::{Parser, Subcommand};
use edge_hierarchy_operator::api::EdgeHierarchy;
use edge_hierarchy_operator::plugin::{self, errors::Target};
use kube::{Api, ResourceExt};

#[derive(Parser)]
#[command(
    name = "kubectl-edgehierarchy",
    version,
    about = "Inspect EdgeHierarchy resources, renew device certificates and import iotedge_config_cli / az configs"
)]
struct Cli {
    /// Namespace of the hierarchy (default: the kubeconfig context's namespace).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the hierarchy as a tree: layer, state, modules running of desired, certificate expiry, drift.
    Tree {
        /// Name of the EdgeHierarchy.
        hierarchy: String,
        /// Keep printing every N seconds until interrupted.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Write a device's config bundle to a .zip or .tar.gz (keys 0600), ready for
    /// `sudo bash ./install.sh` on the device.
    Bundle {
        /// Name of the EdgeHierarchy.
        hierarchy: String,
        /// Device id.
        device: String,
        /// Output file; the format follows the extension (.zip, .tar.gz or .tgz).
        #[arg(short, long)]
        output: std::path::PathBuf,
    },
    /// Show one device: state, certificate (expiry, renewal, revision), bundle, deployment,
    /// modules, drift and the last Events that name it.
    Status {
        /// Name of the EdgeHierarchy.
        hierarchy: String,
        /// Device id.
        device: String,
    },
    /// Ask the operator to re-issue a device's certificates now (annotates its certificate
    /// Secret with the revision to replace); the device gets them with its next bundle.
    Renew {
        /// Name of the EdgeHierarchy.
        hierarchy: String,
        /// Device id.
        device: String,
        /// Wait until the operator has re-issued them (at most this many seconds).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Convert iotedge_config_cli's iotedge_config.yaml, or an `az iot edge devices create --cfg`
    /// file, to an EdgeHierarchy with ConfigMaps for its deployments (multi-document YAML on
    /// stdout; warnings on stderr). Needs no cluster; with -n the objects name that namespace.
    Import {
        /// The config file (YAML, or JSON for the az format). Paths in it are read relative to it.
        file: std::path::PathBuf,
        /// Take over hub devices the tool already created (spec.policy.adoptExisting: true).
        #[arg(long)]
        adopt: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, as kubectl reports errors; causes joined with ": ".
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Import { file, adopt } = &cli.command {
        // Offline: reads files only, so it runs without a cluster or kubeconfig.
        let options = edge_hierarchy_operator::import::ImportOptions {
            adopt: *adopt,
            namespace: cli.namespace.clone(),
        };
        return edge_hierarchy_operator::import::cli::run(file, &options);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Kubernetes ({e}); set KUBECONFIG"))?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    match cli.command {
        Command::Tree { hierarchy, watch } => loop {
            let h = get_hierarchy(&client, &namespace, &hierarchy).await?;
            if watch.is_some() {
                // Clear the screen so the tree redraws in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", edge_hierarchy_operator::tree::render(&h));
            match watch {
                Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
                None => break,
            }
        },
        Command::Status { hierarchy, device } => {
            let h = get_hierarchy(&client, &namespace, &hierarchy).await?;
            let events = hierarchy_events(&client, &h).await?;
            let report = plugin::device::render(&h, &device, &events, jiff::Timestamp::now())
                .map_err(anyhow::Error::msg)?;
            print!("{report}");
        }
        Command::Renew {
            hierarchy,
            device,
            wait,
        } => {
            renew(&client, &namespace, &hierarchy, &device, wait).await?;
        }
        Command::Bundle {
            hierarchy,
            device,
            output,
        } => {
            write_bundle(client, &namespace, &hierarchy, &device, &output).await?;
        }
        // Handled above, before connecting.
        Command::Import { .. } => {}
    }
    Ok(())
}

async fn get_hierarchy(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<EdgeHierarchy> {
    let api: Api<EdgeHierarchy> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.map_err(|e| {
        anyhow::anyhow!(plugin::errors::describe(
            Target {
                kind: "edgehierarchy",
                name,
                namespace,
            },
            &e
        ))
    })
}

/// The Events the operator recorded about `hierarchy` (events.k8s.io, matched by uid).
async fn hierarchy_events(
    client: &kube::Client,
    hierarchy: &EdgeHierarchy,
) -> anyhow::Result<Vec<plugin::device::EventLine>> {
    use k8s_openapi::api::events::v1::Event;
    let namespace = hierarchy.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let uid = hierarchy.uid();
    let list = api.list(&Default::default()).await.map_err(|e| {
        anyhow::anyhow!(plugin::errors::describe(
            Target {
                kind: "events of edgehierarchy",
                name: &hierarchy.name_any(),
                namespace: &namespace,
            },
            &e
        ))
    })?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid)
        .filter_map(|e| {
            let time = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            Some(plugin::device::EventLine {
                time,
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
            })
        })
        .collect())
}

/// Puts the renewal request on the device's certificate Secret and, with `wait`, waits until
/// the operator has replaced that revision.
async fn renew(
    client: &kube::Client,
    namespace: &str,
    hierarchy: &str,
    device: &str,
    wait: Option<u64>,
) -> anyhow::Result<()> {
    use edge_hierarchy_operator::names::{
        RENEW_ANNOTATION, REVISION_ANNOTATION, certificate_secret_name,
    };
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};

    let h = get_hierarchy(client, namespace, hierarchy).await?;
    if !h.spec.devices.iter().any(|d| d.id == device) {
        anyhow::bail!(
            "edgehierarchy {hierarchy:?} in namespace {namespace:?} has no device {device:?}; \
             list its devices with `kubectl edgehierarchy tree {hierarchy} -n {namespace}`"
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = certificate_secret_name(hierarchy, device);
    let target = Target {
        kind: "secret",
        name: &name,
        namespace,
    };
    let describe = |e: kube::Error| anyhow::anyhow!(plugin::errors::describe(target, &e));
    let secret = secrets.get_opt(&name).await.map_err(describe)?.ok_or_else(|| {
        anyhow::anyhow!(
            "device {device:?} of {namespace}/{hierarchy} has no certificates yet (secret {name:?} does not exist); \
             the operator issues them once the device is registered: see `kubectl edgehierarchy status {hierarchy} {device} -n {namespace}`"
        )
    })?;
    let revision = secret
        .annotations()
        .get(REVISION_ANNOTATION)
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!("secret {name:?} has no {REVISION_ANNOTATION} annotation; it was not written by the operator")
        })?;
    let patch = serde_json::json!({"metadata": {"annotations": {RENEW_ANNOTATION: revision}}});
    secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(describe)?;
    println!(
        "renewal of device {device:?} requested: certificate revision {revision} will be re-issued"
    );
    let Some(seconds) = wait else {
        println!(
            "follow it with `kubectl edgehierarchy status {hierarchy} {device} -n {namespace}`"
        );
        return Ok(());
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let current = secrets
            .get_opt(&name)
            .await
            .map_err(describe)?
            .and_then(|s| s.annotations().get(REVISION_ANNOTATION).cloned());
        if let Some(current) = current.filter(|c| *c != revision) {
            println!("re-issued: certificate revision {current}");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the operator has not re-issued revision {revision} of secret {name:?} within {seconds}s; \
                 see `kubectl edgehierarchy status {hierarchy} {device} -n {namespace}` and the operator's log"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn write_bundle(
    client: kube::Client,
    namespace: &str,
    hierarchy: &str,
    device: &str,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    use edge_hierarchy_operator::bundle::{
        ArchiveFormat, BundleFile, mode_for_path, write_archive,
    };
    use k8s_openapi::api::core::v1::Secret;
    use std::os::unix::fs::OpenOptionsExt;

    let format = ArchiveFormat::from_path(output).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot tell the archive format from {}; name it .zip, .tar.gz or .tgz",
            output.display()
        )
    })?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let name = edge_hierarchy_operator::names::bundle_secret_name(hierarchy, device);
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(plugin::errors::describe(
                Target {
                    kind: "secret",
                    name: &name,
                    namespace,
                },
                &e
            ))
        })?
        .ok_or_else(|| {
        anyhow::anyhow!(
            "no bundle for device {device:?} of {namespace}/{hierarchy} (Secret {name} does not exist); check the device id, \
             and `kubectl edgehierarchy tree {hierarchy} -n {namespace}`: a bundle is written once the device is registered"
        )
    })?;
    let files: Vec<BundleFile> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(path, bytes)| BundleFile {
            mode: mode_for_path(&path),
            path,
            contents: bytes.0,
        })
        .collect();
    if files.is_empty() {
        anyhow::bail!("Secret {name} holds no files");
    }
    // The archive holds private keys: create it readable by its owner only.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(output)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
    write_archive(format, &files, std::io::BufWriter::new(file))?;
    eprintln!(
        "wrote {} files of device {device:?} to {}",
        files.len(),
        output.display()
    );
    Ok(())
}
