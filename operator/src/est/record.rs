//! What the server remembers of an enrollment: an annotation per profile on the device's
//! certificate Secret (the latest serial, notAfter and time; for an identity its thumbprint and
//! the one it replaced), and a Normal Event. The certificate step reads the identity's
//! annotation so the hub keeps the thumbprint a device enrolled over EST.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::EstState;
use super::authorize::Profile;
use super::enroll::Enrolled;
use super::trust::HierarchyEntry;
use crate::names::{
    EST_EDGE_CA_ANNOTATION, EST_FIELD_MANAGER, EST_IDENTITY_ANNOTATION, certificate_secret_name,
};

/// The latest EST certificate of one profile, as the annotation holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstRecord {
    pub serial: String,
    pub not_after: Timestamp,
    pub enrolled: Timestamp,
    /// Identity only: thumbprint of the enrolled certificate and of the one presented.
    pub thumbprint: Option<String>,
    pub presented: Option<String>,
}

impl EstRecord {
    pub fn to_annotation(&self) -> String {
        let mut out = format!(
            "serial={},notAfter={},enrolled={}",
            self.serial, self.not_after, self.enrolled
        );
        if let Some(t) = &self.thumbprint {
            out.push_str(&format!(",thumbprint={t}"));
        }
        if let Some(t) = &self.presented {
            out.push_str(&format!(",presented={t}"));
        }
        out
    }

    pub fn from_annotation(text: &str) -> Option<Self> {
        let mut fields = std::collections::BTreeMap::new();
        for part in text.split(',') {
            let (key, value) = part.split_once('=')?;
            fields.insert(key.trim(), value.trim().to_string());
        }
        Some(Self {
            serial: fields.get("serial")?.clone(),
            not_after: fields.get("notAfter")?.parse().ok()?,
            enrolled: fields.get("enrolled")?.parse().ok()?,
            thumbprint: fields.get("thumbprint").cloned(),
            presented: fields.get("presented").cloned(),
        })
    }
}

/// Per device, the hub identity it enrolled over EST last and the one it presented then,
/// from the certificate Secrets' annotations (records whose certificate expired are dropped).
pub fn enrolled_identities(
    secrets: &std::collections::BTreeMap<String, Secret>,
    now: Timestamp,
) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    secrets
        .iter()
        .filter_map(|(id, secret)| {
            let record =
                EstRecord::from_annotation(secret.annotations().get(EST_IDENTITY_ANNOTATION)?)?;
            (record.not_after > now).then_some(())?;
            Some((id.clone(), (record.thumbprint?, record.presented)))
        })
        .collect()
}

/// Per device, its most recent EST enrollment (edge CA or identity), for the status.
pub fn latest_enrollments(
    secrets: &std::collections::BTreeMap<String, Secret>,
) -> std::collections::BTreeMap<String, crate::api::EstCertificateStatus> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    secrets
        .iter()
        .filter_map(|(id, secret)| {
            let (profile, record) = [Profile::EdgeCa, Profile::Identity]
                .into_iter()
                .filter_map(|p| {
                    let text = secret.annotations().get(annotation(p))?;
                    Some((p, EstRecord::from_annotation(text)?))
                })
                .max_by_key(|(_, r)| r.enrolled)?;
            Some((
                id.clone(),
                crate::api::EstCertificateStatus {
                    profile: profile.label().to_string(),
                    serial: record.serial,
                    not_after: Time(record.not_after),
                    enrolled: Time(record.enrolled),
                },
            ))
        })
        .collect()
}

/// The thumbprints the hub must hold: an identity enrolled over EST (and the one the device
/// presented for it, which it may still connect with) replaces what the bundle's Secret says,
/// for the devices that have thumbprints at all (X509).
pub fn with_enrolled_identities(
    mut thumbprints: std::collections::BTreeMap<String, (String, Option<String>)>,
    enrolled: &std::collections::BTreeMap<String, (String, Option<String>)>,
) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    for (id, pair) in thumbprints.iter_mut() {
        if let Some((current, presented)) = enrolled.get(id) {
            *pair = (current.clone(), presented.clone().filter(|p| p != current));
        }
    }
    thumbprints
}

/// Annotation key of `profile`.
pub fn annotation(profile: Profile) -> &'static str {
    match profile {
        Profile::EdgeCa => EST_EDGE_CA_ANNOTATION,
        Profile::Identity => EST_IDENTITY_ANNOTATION,
    }
}

impl EstState {
    /// Writes the enrollment's annotation on the device's certificate Secret.
    pub(super) async fn record(
        &self,
        entry: &HierarchyEntry,
        device_id: &str,
        profile: Profile,
        enrolled: &Enrolled,
        presented: &str,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let record = EstRecord {
            serial: enrolled.serial_hex.clone(),
            not_after: enrolled.not_after,
            enrolled: now,
            thumbprint: (profile == Profile::Identity).then(|| enrolled.sha256_thumbprint.clone()),
            presented: (profile == Profile::Identity).then(|| presented.to_string()),
        };
        let namespace = entry.object.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let name = certificate_secret_name(&entry.object.name_any(), device_id);
        let patch = serde_json::json!({
            "metadata": { "annotations": { annotation(profile): record.to_annotation() } }
        });
        let params = PatchParams {
            field_manager: Some(EST_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        secrets
            .patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| anyhow::anyhow!("recording the enrollment on Secret {name}: {e}"))?;
        Ok(())
    }

    /// A Normal Event about an enrollment.
    pub(super) async fn announce(
        &self,
        entry: &HierarchyEntry,
        device_id: &str,
        profile: Profile,
        enrolled: &Enrolled,
    ) {
        let note = format!(
            "device {device_id:?} enrolled its {} over EST (serial {}, valid until {})",
            profile.label(),
            enrolled.serial_hex,
            enrolled.not_after
        );
        if let Err(e) = self
            .events
            .publish(
                &entry.object.object_ref(&()),
                EventType::Normal,
                "EstEnrolled",
                "Enroll",
                note,
            )
            .await
        {
            warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_its_annotation() {
        let record = EstRecord {
            serial: "4A0B".into(),
            not_after: "2026-07-01T00:00:00Z".parse().unwrap(),
            enrolled: "2026-06-01T00:00:00Z".parse().unwrap(),
            thumbprint: Some("AB".into()),
            presented: Some("CD".into()),
        };
        let text = record.to_annotation();
        assert_eq!(
            text,
            "serial=4A0B,notAfter=2026-07-01T00:00:00Z,enrolled=2026-06-01T00:00:00Z,thumbprint=AB,presented=CD"
        );
        assert_eq!(EstRecord::from_annotation(&text), Some(record));
        assert_eq!(EstRecord::from_annotation("serial=1"), None);
    }

    #[test]
    fn the_status_shows_the_latest_enrollment_of_either_profile() {
        let secret = |annotations: &[(&str, &str)]| Secret {
            metadata: kube::api::ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let secrets = std::collections::BTreeMap::from([
            (
                "gw".to_string(),
                secret(&[
                    (
                        EST_EDGE_CA_ANNOTATION,
                        "serial=AA,notAfter=2026-07-01T00:00:00Z,enrolled=2026-06-02T00:00:00Z",
                    ),
                    (
                        EST_IDENTITY_ANNOTATION,
                        "serial=BB,notAfter=2026-07-01T00:00:00Z,enrolled=2026-06-01T00:00:00Z,thumbprint=T,presented=P",
                    ),
                ]),
            ),
            ("plain".to_string(), secret(&[])),
        ]);
        let latest = latest_enrollments(&secrets);
        assert_eq!(latest.len(), 1);
        assert_eq!(
            (latest["gw"].profile.as_str(), latest["gw"].serial.as_str()),
            ("edge-ca", "AA")
        );
        let now = "2026-06-15T00:00:00Z".parse().unwrap();
        assert_eq!(
            enrolled_identities(&secrets, now)["gw"],
            ("T".to_string(), Some("P".to_string()))
        );
        // An enrolled identity that expired no longer decides the hub's thumbprints.
        let later = "2026-08-01T00:00:00Z".parse().unwrap();
        assert!(enrolled_identities(&secrets, later).is_empty());
    }

    #[test]
    fn an_enrolled_identity_replaces_the_bundles_thumbprints() {
        let thumbprints = std::collections::BTreeMap::from([
            ("gw".to_string(), ("BUNDLE".to_string(), None)),
            (
                "other".to_string(),
                ("O".to_string(), Some("P".to_string())),
            ),
        ]);
        let enrolled = std::collections::BTreeMap::from([
            (
                "gw".to_string(),
                ("EST1".to_string(), Some("BUNDLE".to_string())),
            ),
            ("sas-device".to_string(), ("X".to_string(), None)),
        ]);
        let out = with_enrolled_identities(thumbprints, &enrolled);
        assert_eq!(out["gw"], ("EST1".to_string(), Some("BUNDLE".to_string())));
        assert_eq!(out["other"], ("O".to_string(), Some("P".to_string())));
        assert!(!out.contains_key("sas-device"));
    }
}
