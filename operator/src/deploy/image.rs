//! Container image references and their `$upstream` form.
//!
//! A device below the top layer has no route to the internet: it pulls `$upstream:<port>/<path>`
//! from its parent's API proxy, which forwards up the chain to a registry module on the top layer.
//!
//! Which part of a reference is the registry follows Docker's rule: the first `/`-separated
//! segment is a registry host when it contains `.` or `:` or is `localhost`; otherwise the image
//! is on Docker Hub (`registry:latest` is `docker.io/library/registry:latest`).
//!
//! Decision: Docker Hub images are rewritten only when `docker.io` is listed in
//! `upstreamRegistries`. The default list holds only `mcr.microsoft.com`, because the tutorial's
//! top-layer registry module mirrors exactly one upstream registry (mcr.microsoft.com), and its
//! own `registry:latest` image runs on the top layer, which pulls from Docker Hub directly. A
//! rewritten Docker Hub image keeps Docker Hub's full repository path (`library/` added to
//! official images), since a registry mirror of Docker Hub serves them only under that path.

use crate::api::EdgeRuntimeSpec;

/// Host name under which Docker Hub is listed in `upstreamRegistries`.
pub const DOCKER_HUB: &str = "docker.io";
/// Other host names of Docker Hub that references may spell out.
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
/// Prefix of images pulled through the parent device.
pub const UPSTREAM: &str = "$upstream";

/// The registry host of an image reference, or `None` for a Docker Hub image written without one
/// (`registry:latest`, `library/registry`). Images already in `$upstream:<port>/...` form return
/// `Some("$upstream:<port>")`.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _rest) = image.split_once('/')?;
    (first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.starts_with(UPSTREAM))
    .then_some(first)
}

/// A registry entry of `upstreamRegistries` as a bare lower-case host (`https://` and trailing
/// slashes dropped), so users may write it either way.
fn normalise_registry(entry: &str) -> String {
    let entry = entry.trim();
    let entry = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
        .unwrap_or(entry);
    entry.trim_end_matches('/').to_ascii_lowercase()
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES.contains(&host)
}

/// The `$upstream:<upstreamPort>/<path>` form of `image` when its registry is one of
/// `edge.upstreamRegistries`; `None` when the image stays as it is (other registries, Docker Hub
/// unless `docker.io` is listed, and images already in `$upstream` form, so rewriting is
/// idempotent).
pub fn upstream_image(image: &str, edge: &EdgeRuntimeSpec) -> Option<String> {
    let listed: Vec<String> = edge
        .upstream_registries
        .iter()
        .map(|r| normalise_registry(r))
        .collect();
    let hub_listed = listed.iter().any(|r| is_docker_hub(r));
    let path = match registry_host(image) {
        Some(host) if host.starts_with(UPSTREAM) => return None,
        Some(host) => {
            let host = host.to_ascii_lowercase();
            let path = &image[host.len() + 1..];
            if is_docker_hub(&host) {
                if !hub_listed {
                    return None;
                }
                docker_hub_path(path)
            } else if listed.contains(&host) {
                path.to_string()
            } else {
                return None;
            }
        }
        None if hub_listed && !image.is_empty() => docker_hub_path(image),
        None => return None,
    };
    Some(format!("{UPSTREAM}:{}/{path}", edge.upstream_port))
}

/// `$upstream:<upstreamPort>` for a registry credential `address` whose registry is one of
/// `edge.upstreamRegistries` (Docker Hub's names only when `docker.io` is listed); `None` when
/// it stays as it is.
///
/// Below the top layer such images are pulled as `$upstream:<port>/...`, and edgeAgent uses a
/// credential for an image only when the credential's address, with `$upstream` resolved to the
/// parent, equals the image's registry host (Azure/iotedge `edge-agent`,
/// `CombinedDockerConfigProvider` and `DockerUtil.FirstAuthConfig`). So the credential follows the
/// image.
pub fn upstream_address(address: &str, edge: &EdgeRuntimeSpec) -> Option<String> {
    if address.trim().starts_with(UPSTREAM) {
        return None;
    }
    let listed = edge
        .upstream_registries
        .iter()
        .any(|r| same_registry(r, address));
    listed.then(|| format!("{UPSTREAM}:{}", edge.upstream_port))
}

/// Whether two names of registries mean the same one: case, an `https://` prefix, a trailing `/`
/// and Docker Hub's several names (`docker.io`, `index.docker.io`, Docker's credential form
/// `https://index.docker.io/v1/`) aside.
pub fn same_registry(a: &str, b: &str) -> bool {
    fn canonical(name: &str) -> String {
        let host = normalise_registry(name);
        let host = host.strip_suffix("/v1").unwrap_or(&host);
        if is_docker_hub(host) {
            DOCKER_HUB.to_string()
        } else {
            host.to_string()
        }
    }
    canonical(a) == canonical(b)
}

/// Docker Hub's repository path: official images live under `library/`.
fn docker_hub_path(path: &str) -> String {
    if path.contains('/') {
        path.to_string()
    } else {
        format!("library/{path}")
    }
}

/// The registry a lower-layer device would have to reach itself for `image`: `Some(host)` when
/// the image is neither rewritten to `$upstream` nor already in that form. Docker Hub images
/// without a host report `docker.io`.
pub fn unreachable_registry(image: &str, edge: &EdgeRuntimeSpec) -> Option<String> {
    if upstream_image(image, edge).is_some() {
        return None;
    }
    match registry_host(image) {
        Some(host) if host.starts_with(UPSTREAM) => None,
        Some(host) => Some(host.to_ascii_lowercase()),
        None => Some(DOCKER_HUB.to_string()),
    }
}

/// Whether the image an edge agent reports running is the desired one. The agent reports what it
/// resolved, not what it was given: below the top layer `$upstream` becomes the parent's hostname
/// (the port stays), and a reference without tag or digest gets `:latest`.
pub fn same_image(desired: &str, reported: &str) -> bool {
    let (desired, reported) = (with_tag(desired), with_tag(reported));
    match registry_host(&desired) {
        Some(host) if host.starts_with(UPSTREAM) => {
            let port = &host[UPSTREAM.len()..];
            let path = &desired[host.len()..];
            registry_host(&reported)
                .is_some_and(|parent| parent.ends_with(port) && reported[parent.len()..] == *path)
        }
        _ => desired == reported,
    }
}

/// `image` with `:latest` added when it names neither tag nor digest.
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The repository name of an image without registry, path, tag or digest:
/// `mcr.microsoft.com/azureiotedge-api-proxy:1.1` → `azureiotedge-api-proxy`.
pub fn repository_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
#[path = "tests/image.rs"]
mod tests;
