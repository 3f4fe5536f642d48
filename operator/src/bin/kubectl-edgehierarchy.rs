//! `kubectl edgehierarchy`: a kubectl plugin to look at hierarchies and take device bundles out.

use clap::{Parser, Subcommand};
use edge_hierarchy_operator::api::EdgeHierarchy;
use kube::Api;

#[derive(Parser)]
#[command(
    name = "kubectl-edgehierarchy",
    version,
    about = "Inspect EdgeHierarchy resources"
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
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
