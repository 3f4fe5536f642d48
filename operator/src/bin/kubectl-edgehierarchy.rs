//! `kubectl edgehierarchy`: a kubectl plugin to look at hierarchies, take device bundles out, and
//! import the configs of the tools people come from.

use clap::{Parser, Subcommand};
use edge_hierarchy_operator::api::EdgeHierarchy;
use kube::Api;

#[derive(Parser)]
#[command(
    name = "kubectl-edgehierarchy",
    version,
    about = "Inspect EdgeHierarchy resources and import iotedge_config_cli / az configs"
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
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
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
    let hierarchies: Api<EdgeHierarchy> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Tree { hierarchy, watch } => loop {
            let h = hierarchies.get(&hierarchy).await.map_err(|e| {
                anyhow::anyhow!("cannot read EdgeHierarchy {namespace}/{hierarchy}: {e}")
            })?;
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
    let secret = secrets.get_opt(&name).await?.ok_or_else(|| {
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
