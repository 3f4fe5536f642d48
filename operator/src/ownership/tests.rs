use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;

fn identity() -> HierarchyIdentity {
    HierarchyIdentity::new("plant", "factory", UID)
}

const UID: &str = "5f0c3a52-8c1e-4f0e-9c55-0f6a3f1d2b7e";

fn device(ex: &Example, id: &str) -> DeviceSpec {
    ex.spec
        .devices
        .iter()
        .find(|d| d.id == id)
        .cloned()
        .expect("device in example")
}

#[test]
fn ownership_tags_for_each_kind_of_device() {
    let ex = factory();
    let tags = |id: &str| ownership_tags(&identity(), &device(&ex, id), ex.topology.layer[id]);
    assert_eq!(
        tags("site1-area1-line1-cell1"),
        json!({"edgeHierarchy": {"namespace": "plant", "name": "factory", "uid": UID, "layer": 5,
            "deployment": "cell", "layered": {"monitoring": true}}})
    );
    assert_eq!(
        tags("site1-area1-gw"),
        json!({"edgeHierarchy": {"namespace": "plant", "name": "factory", "uid": UID, "layer": 3, "deployment": "gateway"}})
    );
    assert_eq!(
        tags("site1-badge-reader"),
        json!({"edgeHierarchy": {"namespace": "plant", "name": "factory", "uid": UID, "layer": 3}})
    );
    assert_eq!(layered_tag_key("my-layer-2"), "my_layer_2");
    // A property path segment must be an identifier: no leading digit.
    assert_eq!(layered_tag_key("2nd-layer"), "_2nd_layer");
    assert_eq!(
        target_condition(UID, "2nd-layer", true, Variant::Lower),
        format!(
            "tags.edgeHierarchy.uid='{UID}' AND tags.edgeHierarchy.layered._2nd_layer=true AND tags.edgeHierarchy.layer>1"
        )
    );
}

#[test]
fn tag_patches_add_change_and_remove_only_our_keys() {
    let ex = factory();
    let desired = ownership_tags(&identity(), &device(&ex, "site1-gw"), 2);
    // A fresh twin gets everything.
    assert_eq!(
        ownership_tags_patch(&Value::Null, &desired),
        Some(desired.clone())
    );
    assert_eq!(
        ownership_tags_patch(&json!({"site": "berlin"}), &desired),
        Some(desired.clone())
    );
    // Equal (a number echoed as float included): nothing to do.
    let mut current = desired.clone();
    current["site"] = json!("berlin");
    assert_eq!(ownership_tags_patch(&current, &desired), None);
    current["edgeHierarchy"]["layer"] = json!(2.0);
    assert_eq!(ownership_tags_patch(&current, &desired), None);
    // A dropped layered deployment and a moved device: stale keys are nulled, user tags untouched.
    current["edgeHierarchy"]["layered"]["old_layer"] = json!(true);
    current["edgeHierarchy"]["layer"] = json!(3);
    current["edgeHierarchy"]["extra"] = json!({"x": 1});
    assert_eq!(
        ownership_tags_patch(&current, &desired),
        Some(json!({"edgeHierarchy": {"layer": 2, "layered": {"old_layer": null}, "extra": null}}))
    );
    // A device that lost all layered deployments and its deployment (became a Leaf).
    let mut leaf = device(&ex, "site1-gw");
    leaf.device_type = crate::api::DeviceType::Leaf;
    let leaf_tags = ownership_tags(&identity(), &leaf, 2);
    assert_eq!(
        ownership_tags_patch(&desired, &leaf_tags),
        Some(json!({"edgeHierarchy": {"deployment": null, "layered": null}}))
    );
    // A scalar where an object belongs is replaced whole.
    assert_eq!(
        ownership_tags_patch(&json!({"edgeHierarchy": "x"}), &leaf_tags),
        Some(leaf_tags.clone())
    );
}

#[test]
fn target_conditions_quote_and_select_by_layer() {
    assert_eq!(
        target_condition(UID, "top-layer", false, Variant::Top),
        format!(
            "tags.edgeHierarchy.uid='{UID}' AND tags.edgeHierarchy.deployment='top-layer' AND tags.edgeHierarchy.layer=1"
        )
    );
    assert_eq!(
        target_condition(UID, "lower-layer", false, Variant::Lower),
        format!(
            "tags.edgeHierarchy.uid='{UID}' AND tags.edgeHierarchy.deployment='lower-layer' AND tags.edgeHierarchy.layer>1"
        )
    );
    assert_eq!(
        target_condition(UID, "my-monitoring", true, Variant::Lower),
        format!(
            "tags.edgeHierarchy.uid='{UID}' AND tags.edgeHierarchy.layered.my_monitoring=true AND tags.edgeHierarchy.layer>1"
        )
    );
    assert_eq!(
        target_condition("it's", "o'neil", false, Variant::Top),
        "tags.edgeHierarchy.uid='it''s' AND tags.edgeHierarchy.deployment='o''neil' AND tags.edgeHierarchy.layer=1"
    );
}

#[test]
fn labels_mark_ownership() {
    let owner = identity().with_key(Some(ProofKey::new(b"the namespace's key")));
    let id = "factory-cell-0123abcd";
    let labels = configuration_labels(&owner, "cell", Variant::Lower, id);
    let proof = owner.proof(&format!("configuration/{id}")).unwrap();
    assert_eq!(
        labels,
        BTreeMap::from([
            (
                "managedBy".to_string(),
                "edge-hierarchy-operator".to_string()
            ),
            ("edgeHierarchyDeployment".to_string(), "cell".to_string()),
            ("edgeHierarchyName".to_string(), "factory".to_string()),
            ("edgeHierarchyNamespace".to_string(), "plant".to_string()),
            ("edgeHierarchyProof".to_string(), proof),
            ("edgeHierarchyUid".to_string(), UID.to_string()),
            ("edgeHierarchyVariant".to_string(), "lower".to_string()),
        ])
    );
    assert_eq!(
        judge_configuration(Some(&labels), id, &owner),
        Ownership::Ours
    );
    // The proof is the configuration's own: on another id, or without a key, it proves nothing.
    assert_eq!(
        judge_configuration(Some(&labels), "factory-cell-ffffffff", &owner),
        Ownership::Unproven
    );
    assert_eq!(
        judge_configuration(Some(&labels), id, &identity()),
        Ownership::Unproven
    );
    let other = HierarchyIdentity::new("plant", "other", "another-uid").with_key(owner.key.clone());
    assert!(matches!(
        judge_configuration(Some(&labels), id, &other),
        Ownership::Other { .. }
    ));
    let name_only = BTreeMap::from([("edgeHierarchyName".to_string(), "factory".to_string())]);
    assert!(matches!(
        judge_configuration(Some(&name_only), id, &owner),
        Ownership::Other { .. }
    ));
    assert_eq!(judge_configuration(None, id, &owner), Ownership::Unowned);
    // Configurations written by earlier versions carry the uid under an older key and no proof.
    let legacy = BTreeMap::from([("edgehierarchy.dev/uid".to_string(), UID.to_string())]);
    assert_eq!(
        judge_configuration(Some(&legacy), id, &owner),
        Ownership::Unproven
    );
    // An earlier hierarchy of the same name (deleted with Detach): its own, by the proof.
    let earlier = HierarchyIdentity::new("plant", "factory", "old-uid").with_key(owner.key.clone());
    let old = configuration_labels(&earlier, "cell", Variant::Lower, id);
    assert_eq!(
        judge_configuration(Some(&old), id, &owner),
        Ownership::Earlier {
            uid: "old-uid".into()
        }
    );
}

/// IoT Hub's label rule: keys and values of at most 128 characters from letters, digits and
/// `-:.+%_#*?!(),=@;'`.
fn valid_label_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@;'".contains(c))
}

#[test]
fn labels_follow_iot_hubs_rule_for_any_hierarchy_name() {
    let long = HierarchyIdentity::new(&"n".repeat(63), &"h".repeat(253), UID);
    let long = long.with_key(Some(ProofKey::new(b"key")));
    for (key, value) in configuration_labels(&long, &"d".repeat(63), Variant::Top, "id") {
        assert!(valid_label_text(&key), "key {key:?}");
        assert!(valid_label_text(&value), "{key} = {value:?}");
    }
}

#[test]
fn a_proof_binds_key_hierarchy_and_device() {
    let keyed = |key: &[u8]| identity().with_key(Some(ProofKey::new(key)));
    let ours = keyed(b"the namespace's key");
    let tags = |id: &str, identity: &HierarchyIdentity| json!({"namespace": "plant", "name": "factory", "uid": UID, "proof": identity.proof(id)});
    assert_eq!(
        judge(Some(&tags("gw", &ours)), "gw", &ours),
        Ownership::Ours
    );
    // Copied from another device, made with another key, or absent: not proven.
    assert_eq!(
        judge(Some(&tags("gw", &ours)), "gw-2", &ours),
        Ownership::Unproven
    );
    assert_eq!(
        judge(Some(&tags("gw", &keyed(b"another key"))), "gw", &ours),
        Ownership::Unproven
    );
    let bare = json!({"namespace": "plant", "name": "factory", "uid": UID});
    assert_eq!(judge(Some(&bare), "gw", &ours), Ownership::Unproven);
    // Without a key nothing can be proven.
    assert_eq!(
        judge(Some(&tags("gw", &ours)), "gw", &identity()),
        Ownership::Unproven
    );
    // The proof also binds the uid: an earlier hierarchy's is recognised as that one's.
    let earlier = HierarchyIdentity::new("plant", "factory", "old-uid").with_key(ours.key.clone());
    let old = json!({"namespace": "plant", "name": "factory", "uid": "old-uid",
        "proof": earlier.proof("gw")});
    assert_eq!(
        judge(Some(&old), "gw", &ours),
        Ownership::Earlier {
            uid: "old-uid".into()
        }
    );
    // The same tags in another namespace's hierarchy are another owner's.
    let elsewhere = HierarchyIdentity::new("other", "factory", "uid-9").with_key(ours.key.clone());
    assert!(matches!(
        judge(Some(&old), "gw", &elsewhere),
        Ownership::Other { .. }
    ));
    // The tags carry the proof; a key never appears in them or in Debug output.
    let tagged = ownership_tags(&ours, &device(&factory(), "site1-gw"), 2);
    assert_eq!(tagged[TAG]["proof"], json!(ours.proof("site1-gw")));
    assert_eq!(ours.proof("site1-gw").unwrap().len(), 32);
    assert!(!format!("{ours:?}").contains("namespace's key"));
}
