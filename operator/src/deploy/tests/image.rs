use super::*;

fn edge(registries: &[&str], port: u16) -> EdgeRuntimeSpec {
    EdgeRuntimeSpec {
        upstream_registries: registries.iter().map(|r| r.to_string()).collect(),
        upstream_port: port,
        ..EdgeRuntimeSpec::default()
    }
}

#[test]
fn registry_host_follows_dockers_rule() {
    for (image, host) in [
        (
            "mcr.microsoft.com/azureiotedge-agent:1.5",
            Some("mcr.microsoft.com"),
        ),
        ("localhost/x", Some("localhost")),
        ("localhost:5000/team/x:1", Some("localhost:5000")),
        ("10.0.0.1/x", Some("10.0.0.1")),
        ("$upstream:443/azureiotedge-hub:1.5", Some("$upstream:443")),
        ("registry:latest", None),
        ("registry", None),
        ("library/registry:2", None),
        ("myteam/app:1", None),
        ("", None),
    ] {
        assert_eq!(registry_host(image), host, "{image}");
    }
}

#[test]
fn listed_registries_are_rewritten_with_their_path() {
    let e = edge(&["mcr.microsoft.com"], 443);
    for (image, want) in [
        (
            "mcr.microsoft.com/azureiotedge-agent:1.5",
            Some("$upstream:443/azureiotedge-agent:1.5"),
        ),
        (
            "MCR.microsoft.com/a/b/c@sha256:abc",
            Some("$upstream:443/a/b/c@sha256:abc"),
        ),
        ("mcr.microsoft.com.evil.example/x", None),
        ("myacr.azurecr.io/x:1", None),
        ("registry:latest", None),
        ("docker.io/library/registry:2", None),
        ("$upstream:443/azureiotedge-agent:1.5", None),
        ("$upstream:8443/azureiotedge-agent:1.5", None),
    ] {
        assert_eq!(upstream_image(image, &e).as_deref(), want, "{image}");
    }
    let e = edge(&[" https://MCR.microsoft.com/ ", "localhost:5000"], 8443);
    assert_eq!(
        upstream_image("mcr.microsoft.com/x:1", &e).as_deref(),
        Some("$upstream:8443/x:1")
    );
    assert_eq!(
        upstream_image("localhost:5000/team/x:1", &e).as_deref(),
        Some("$upstream:8443/team/x:1")
    );
    assert_eq!(
        upstream_image("mcr.microsoft.com/x:1", &edge(&[], 443)),
        None
    );
}

#[test]
fn docker_hub_is_rewritten_only_when_listed() {
    let e = edge(&["mcr.microsoft.com", "docker.io"], 443);
    for (image, want) in [
        ("registry:latest", "$upstream:443/library/registry:latest"),
        ("registry", "$upstream:443/library/registry"),
        ("myteam/app:1", "$upstream:443/myteam/app:1"),
        (
            "docker.io/library/registry:2",
            "$upstream:443/library/registry:2",
        ),
        ("docker.io/registry:2", "$upstream:443/library/registry:2"),
        ("index.docker.io/myteam/app", "$upstream:443/myteam/app"),
    ] {
        assert_eq!(upstream_image(image, &e).as_deref(), Some(want), "{image}");
    }
    assert_eq!(upstream_image("", &e), None);
}

#[test]
fn rewriting_is_idempotent() {
    let e = edge(&["mcr.microsoft.com", "docker.io"], 443);
    for image in [
        "mcr.microsoft.com/azureiotedge-hub:1.5",
        "registry:latest",
        "other.example/x",
    ] {
        let once = upstream_image(image, &e).unwrap_or_else(|| image.to_string());
        assert_eq!(
            upstream_image(&once, &e),
            None,
            "{once} is not rewritten again"
        );
    }
}

#[test]
fn unreachable_registries_are_those_neither_rewritten_nor_upstream() {
    let e = edge(&["mcr.microsoft.com"], 443);
    assert_eq!(unreachable_registry("mcr.microsoft.com/x", &e), None);
    assert_eq!(unreachable_registry("$upstream:443/x", &e), None);
    assert_eq!(
        unreachable_registry("Myacr.azurecr.io/x", &e).as_deref(),
        Some("myacr.azurecr.io")
    );
    assert_eq!(
        unreachable_registry("registry:latest", &e).as_deref(),
        Some("docker.io")
    );
    assert_eq!(
        unreachable_registry("registry:latest", &edge(&["docker.io"], 443)),
        None
    );
}

#[test]
fn repository_names_drop_registry_path_tag_and_digest() {
    for (image, name) in [
        (
            "mcr.microsoft.com/azureiotedge-api-proxy:1.1",
            "azureiotedge-api-proxy",
        ),
        (
            "$upstream:443/azureiotedge-api-proxy:1.1",
            "azureiotedge-api-proxy",
        ),
        (
            "localhost:5000/a/azureiotedge-api-proxy@sha256:00",
            "azureiotedge-api-proxy",
        ),
        ("azureiotedge-api-proxy", "azureiotedge-api-proxy"),
        ("", ""),
    ] {
        assert_eq!(repository_name(image), name, "{image}");
    }
}

#[test]
fn reported_images_compare_as_the_agent_resolves_them() {
    // Below the top layer the agent reports the parent's hostname in place of $upstream.
    assert!(same_image(
        "$upstream:443/azureiotedge-agent:1.5",
        "top-layer.example:443/azureiotedge-agent:1.5"
    ));
    assert!(same_image(
        "$upstream:443/azureiotedge-agent:1.5",
        "10.0.0.4:443/azureiotedge-agent:1.5"
    ));
    assert!(!same_image(
        "$upstream:443/azureiotedge-agent:1.5",
        "top-layer.example:8443/azureiotedge-agent:1.5"
    ));
    assert!(!same_image(
        "$upstream:443/azureiotedge-agent:1.5",
        "top-layer.example:443/azureiotedge-agent:1.4"
    ));
    // A reference without a tag is reported with :latest.
    assert!(same_image("registry", "registry:latest"));
    assert!(same_image("$upstream:443/app", "parent:443/app:latest"));
    assert!(same_image(
        "mcr.microsoft.com/x@sha256:ab",
        "mcr.microsoft.com/x@sha256:ab"
    ));
    assert!(!same_image(
        "mcr.microsoft.com/x:1",
        "mcr.microsoft.com/x:2"
    ));
    assert!(!same_image("mcr.microsoft.com/x:1", "other.io/x:1"));
}

#[test]
fn credential_addresses_of_mirrored_registries_become_upstream() {
    let e = edge(&["mcr.microsoft.com", "https://MyACR.azurecr.io/"], 8443);
    assert_eq!(
        upstream_address("mcr.microsoft.com", &e).as_deref(),
        Some("$upstream:8443")
    );
    assert_eq!(
        upstream_address("myacr.azurecr.io", &e).as_deref(),
        Some("$upstream:8443")
    );
    assert_eq!(upstream_address("other.azurecr.io", &e), None);
    assert_eq!(upstream_address("$upstream:8443", &e), None, "idempotent");
    // Docker Hub only when it is listed, under any of its names.
    assert_eq!(upstream_address("https://index.docker.io/v1/", &e), None);
    let hub = edge(&["docker.io"], 443);
    assert_eq!(
        upstream_address("https://index.docker.io/v1/", &hub).as_deref(),
        Some("$upstream:443")
    );
}

#[test]
fn registry_names_compare_without_case_scheme_or_docker_hub_aliases() {
    assert!(same_registry(
        "MyACR.azurecr.io",
        "https://myacr.azurecr.io/"
    ));
    assert!(same_registry("docker.io", "https://index.docker.io/v1/"));
    assert!(same_registry("registry-1.docker.io", "index.docker.io"));
    assert!(!same_registry("myacr.azurecr.io", "myacr.azurecr.io:5000"));
    assert!(!same_registry("a.azurecr.io", "b.azurecr.io"));
}
