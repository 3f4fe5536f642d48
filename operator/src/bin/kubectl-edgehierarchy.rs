//! `kubectl edgehierarchy`: a kubectl plugin to look at hierarchies and take device bundles out.

use clap::{Parser, Subcommand};
use edge_hierarchy_operator::api::EdgeHierarchy;
use kube::Api;

#[derive(Parser)]
#[command(name = "kubectl-edgehierarchy", version, about = "Inspect EdgeHierarchy resources")]
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Kubernetes ({e}); set KUBECONFIG"))?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let hierarchies: Api<EdgeHierarchy> = Api::namespaced(client, &namespace);
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
    }
    Ok(())
}
