//! Names, labels and annotations of the Kubernetes objects the operator makes: every one is
//! defined here, nowhere else. (The marks it leaves in IoT Hub, twin tags and configuration
//! labels, live with the ownership rules in `crate::ownership`.)
//!
//! Device ids allow characters Kubernetes names do not (`:`, `#`, `@`, upper case ...), so object
//! names use a DNS-1123 slug of the id plus a short hash of the exact id: two ids that slug alike
//! still get different names, and the same id always gets the same name.

use sha2::{Digest, Sha256};

/// Field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "edge-hierarchy-operator";
/// Label naming the hierarchy an object belongs to.
pub const HIERARCHY_LABEL: &str = "edgehierarchy.dev/hierarchy";
/// Label naming the device an object belongs to (the slug, since labels have a charset too).
pub const DEVICE_LABEL: &str = "edgehierarchy.dev/device";
/// Annotation carrying the exact device id.
pub const DEVICE_ID_ANNOTATION: &str = "edgehierarchy.dev/device-id";
/// Finalizer that holds a hierarchy until its hub objects are handled.
pub const FINALIZER: &str = "edgehierarchy.dev/cleanup";
/// The standard label naming the tool that manages an object; its value is [`MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label telling the operator's Secrets apart: one of the `*_COMPONENT` values.
pub const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
/// [`COMPONENT_LABEL`] of a device's certificate Secret.
pub const CERTS_COMPONENT: &str = "certs";
/// [`COMPONENT_LABEL`] of a device's bundle Secret.
pub const BUNDLE_COMPONENT: &str = "bundle";
/// [`COMPONENT_LABEL`] of the generated root CA Secret.
pub const ROOT_CA_COMPONENT: &str = "root-ca";
/// Annotation counting how often a Secret's content was issued or rewritten.
pub const REVISION_ANNOTATION: &str = "edgehierarchy.dev/revision";
/// Annotation a user (or `kubectl edgehierarchy renew`) puts on a device's certificate Secret to
/// have it re-issued now: the value is the [`REVISION_ANNOTATION`] to replace. Naming the
/// revision makes the request happen once: the re-issued Secret has the next revision, so a
/// request left behind never matches again.
pub const RENEW_ANNOTATION: &str = "edgehierarchy.dev/renew-revision";
/// Annotation on a certificate Secret: SHA-256 thumbprint of the root that signed it.
pub const ROOT_ANNOTATION: &str = "edgehierarchy.dev/root-thumbprint";
/// Annotation on a certificate Secret: the identity thumbprint before the last renewal.
pub const PREVIOUS_IDENTITY_ANNOTATION: &str = "edgehierarchy.dev/previous-identity-thumbprint";
/// Annotation on a bundle Secret: fingerprint of its files.
pub const FINGERPRINT_ANNOTATION: &str = "edgehierarchy.dev/fingerprint";
/// Annotation on a bundle Secret: the device scope the bundle was written for.
pub const SCOPE_ANNOTATION: &str = "edgehierarchy.dev/device-scope";
/// Annotation on a bundle Secret: SHA-256 thumbprints of the roots its trust bundle holds,
/// comma-separated (what a device trusts once it installed this bundle).
pub const TRUSTED_ROOTS_ANNOTATION: &str = "edgehierarchy.dev/trusted-roots";
/// Annotation on a bundle Secret: SHA-256 thumbprint of the edge CA it carries.
pub const EDGE_CA_ANNOTATION: &str = "edgehierarchy.dev/edge-ca-thumbprint";
/// Annotations on a bundle Secret: the fingerprint, trusted roots and edge CA of the revision
/// before the current one, so a device that acknowledged that revision is still known to run it
/// after the operator wrote the next.
pub const PREVIOUS_FINGERPRINT_ANNOTATION: &str = "edgehierarchy.dev/previous-fingerprint";
pub const PREVIOUS_TRUSTED_ROOTS_ANNOTATION: &str = "edgehierarchy.dev/previous-trusted-roots";
pub const PREVIOUS_EDGE_CA_ANNOTATION: &str = "edgehierarchy.dev/previous-edge-ca-thumbprint";
pub const PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE: &str =
    "edgehierarchy.dev/previous-bundle-identity-thumbprint";
/// Annotation on a bundle Secret: SHA-256 thumbprint of the identity certificate it carries.
pub const IDENTITY_ANNOTATION: &str = "edgehierarchy.dev/identity-thumbprint";
/// Annotation on a certificate Secret: the identity thumbprint before
/// [`PREVIOUS_IDENTITY_ANNOTATION`], kept so a device that missed one renewal keeps access.
pub const OLDER_IDENTITY_ANNOTATION: &str = "edgehierarchy.dev/older-identity-thumbprint";
/// Annotation the installer (a person, fleet tooling, edge-sim) puts on a bundle Secret once the
/// device runs it: the bundle's [`FINGERPRINT_ANNOTATION`]. A root rotation advances on it.
pub const INSTALLED_ANNOTATION: &str = "edgehierarchy.dev/installed-fingerprint";
/// [`COMPONENT_LABEL`] of the Secret keeping the roots a rotation still trusts.
pub const RETIRED_ROOT_COMPONENT: &str = "retired-root";
/// Annotation on the retired-root Secret: when the rotation began (RFC 3339).
pub const ROTATION_STARTED_ANNOTATION: &str = "edgehierarchy.dev/rotation-started";
/// Annotations on a certificate Secret: the latest certificate the device enrolled over EST,
/// per profile (`serial=..,notAfter=..,enrolled=..`, and for the identity `thumbprint=..` and
/// the `presented=..` thumbprint it authenticated with). Written by the EST server.
pub const EST_EDGE_CA_ANNOTATION: &str = "edgehierarchy.dev/est-edge-ca";
pub const EST_IDENTITY_ANNOTATION: &str = "edgehierarchy.dev/est-identity";
/// Field manager of the EST server's writes, so the certificate step's applies keep them.
pub const EST_FIELD_MANAGER: &str = "edge-hierarchy-operator-est";
/// The standard label tying an EndpointSlice to its Service (discovery.k8s.io/v1).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The standard label naming who manages an EndpointSlice; the EndpointSlice controller leaves
/// slices alone whose value is not its own. Ours is [`MANAGER`].
pub const ENDPOINTSLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Annotation on a bundle Secret: the hub device's etag when its SAS key was last known; a
/// different etag (someone changed the device, its keys perhaps) makes the key be read again.
pub const DEVICE_ETAG_ANNOTATION: &str = "edgehierarchy.dev/device-etag";

/// Most characters of a Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// First 8 hex digits of SHA-256: short, and collisions within one hierarchy are negligible.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case DNS-1123 label characters of `text`, runs of anything else folded into one `-`.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.trim_matches('-').to_string()
}

/// Name of a per-device object: `<hierarchy>-<device slug>-<hash8>-<suffix>`, always a valid
/// DNS-1123 subdomain.
pub fn device_object_name(hierarchy: &str, device_id: &str, suffix: &str) -> String {
    let hash = short_hash(device_id);
    let fixed = hierarchy.len() + hash.len() + suffix.len() + 3;
    // Aim for names of at most 63 characters (readable in kubectl output); a long hierarchy name
    // still leaves the device 8 characters, within the 253 of a subdomain.
    let room = 63usize
        .saturating_sub(fixed)
        .max(8)
        .min(MAX_NAME.saturating_sub(fixed));
    let device = slug(device_id, room);
    let device = if device.is_empty() {
        "device".to_string()
    } else {
        device
    };
    format!("{hierarchy}-{device}-{hash}-{suffix}")
}

/// Label value for a device: a slug of at most 63 characters with the hash, so it stays unique.
pub fn device_label_value(device_id: &str) -> String {
    let device = slug(device_id, 54);
    let device = if device.is_empty() {
        "device".to_string()
    } else {
        device
    };
    format!("{device}-{}", short_hash(device_id))
}

/// Secret holding a device's edge CA (and identity) certificate.
pub fn certificate_secret_name(hierarchy: &str, device_id: &str) -> String {
    device_object_name(hierarchy, device_id, "certs")
}

/// Secret holding a device's config bundle.
pub fn bundle_secret_name(hierarchy: &str, device_id: &str) -> String {
    device_object_name(hierarchy, device_id, "bundle")
}

/// Secret holding the generated root CA.
pub fn root_ca_secret_name(hierarchy: &str) -> String {
    format!("{hierarchy}-root-ca")
}

/// Name of the Secret holding the old roots while a root rotation runs.
pub fn retired_root_secret_name(hierarchy: &str) -> String {
    format!("{hierarchy}-retired-root-ca")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1123_subdomain(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn device_ids_with_any_iothub_character_make_valid_names() {
        for id in [
            "top-layer",
            "Lower.Layer:01",
            "a#b*c?d!e(f)g,h=i@j$k'l%m+n_o",
            "----",
            "ÄÖÜ",
            &"x".repeat(128),
        ] {
            for name in [
                bundle_secret_name("tutorial", id),
                certificate_secret_name("tutorial", id),
            ] {
                assert!(is_dns1123_subdomain(&name), "{id:?} -> {name:?}");
            }
            assert!(bundle_secret_name("tutorial", id).len() <= 63);
            let label = device_label_value(id);
            assert!(
                label.len() <= 63 && is_dns1123_subdomain(&label),
                "{id:?} -> {label:?}"
            );
        }
    }

    #[test]
    fn ids_that_slug_alike_get_different_names() {
        assert_ne!(
            bundle_secret_name("h", "Top-Layer"),
            bundle_secret_name("h", "top-layer")
        );
        assert_ne!(
            bundle_secret_name("h", "a:b"),
            bundle_secret_name("h", "a.b")
        );
        assert_eq!(
            bundle_secret_name("h", "a:b"),
            bundle_secret_name("h", "a:b")
        );
    }

    #[test]
    fn names_read_like_the_device() {
        assert!(bundle_secret_name("tutorial", "lower-layer").starts_with("tutorial-lower-layer-"));
        assert!(bundle_secret_name("tutorial", "lower-layer").ends_with("-bundle"));
        assert_eq!(root_ca_secret_name("tutorial"), "tutorial-root-ca");
    }
}
