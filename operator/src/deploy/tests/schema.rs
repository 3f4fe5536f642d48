use sha2::{Digest, Sha256};

use super::*;

const SOURCE_MD: &str = include_str!("../../../schemas/SOURCE.md");

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 12226 -> "12,226", as SOURCE.md writes sizes.
fn with_commas(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn embedded_schemas_are_the_copies_recorded_in_source_md() {
    for (file, text) in [
        ("azure-iot-edgeagent-deployment-1.1.json", EDGE_AGENT_1_1),
        ("azure-iot-edgehub-deployment-1.1.json", EDGE_HUB_1_1),
        ("azure-iot-edgehub-deployment-1.2.json", EDGE_HUB_1_2),
    ] {
        let row = SOURCE_MD
            .lines()
            .find(|l| l.starts_with(&format!("| `{file}`")))
            .unwrap_or_else(|| panic!("SOURCE.md has a row for {file}"));
        assert!(
            row.contains(&sha256_hex(text)),
            "{file}: digest differs from SOURCE.md: {row}"
        );
        assert!(
            row.contains(&with_commas(text.len())),
            "{file}: size differs from SOURCE.md: {row}"
        );
    }
}

#[test]
fn schemas_and_sub_schemas_compile() {
    let s = &*SCHEMAS;
    assert_eq!(
        s.edge_agent_1_1.document["title"],
        "JSON schema for Azure IoT EdgeAgent Deployment version 1.1"
    );
    assert_eq!(
        s.edge_hub_1_2.document["title"],
        "JSON schema for Azure IoT EdgeHub Deployment version 1.2"
    );
    // Each cut carries the root definitions its $refs need.
    assert!(s.modules.document["definitions"]["moduleSettings"].is_object());
    assert!(s.modules.document["patternProperties"]["^[a-zA-Z0-9_-]+$"].is_object());
    assert!(s.registry_credentials.document["patternProperties"].is_object());
    assert!(s.routes.document["patternProperties"]["^[^\\.\\$# ]+$"]["anyOf"].is_array());
}

#[test]
fn sub_schemas_apply_the_upstream_rules() {
    let module = json!({"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "x"}});
    assert!(
        SCHEMAS
            .modules
            .validator
            .is_valid(&single("ok_name-1", &module))
    );
    assert!(
        !SCHEMAS
            .modules
            .validator
            .is_valid(&single("bad.name", &module))
    );
    assert!(
        !SCHEMAS
            .modules
            .validator
            .is_valid(&single("m", &json!({"type": "docker"})))
    );
    assert!(
        SCHEMAS
            .routes
            .validator
            .is_valid(&single("r", &json!("FROM /* INTO $upstream")))
    );
    assert!(SCHEMAS.routes.validator.is_valid(&single(
        "r",
        &json!({"route": "FROM /* INTO $upstream", "priority": 3})
    )));
    assert!(!SCHEMAS.routes.validator.is_valid(&single(
        "r",
        &json!({"route": "FROM /* INTO $upstream", "priority": 10})
    )));
    let cred = json!({"username": "u", "password": "p", "address": "example.azurecr.io"});
    assert!(
        SCHEMAS
            .registry_credentials
            .validator
            .is_valid(&single("acr", &cred))
    );
    assert!(
        !SCHEMAS
            .registry_credentials
            .validator
            .is_valid(&single("acr", &json!({"username": "u"})))
    );
}

#[test]
fn pointer_segments_unescape() {
    assert_eq!(pointer_segments(""), Vec::<String>::new());
    assert_eq!(
        pointer_segments("/$edgeAgent/properties.desired/a~1b/c~0d/0"),
        ["$edgeAgent", "properties.desired", "a/b", "c~d", "0"]
    );
}

#[test]
fn schema_node_follows_local_refs() {
    let agent = &SCHEMAS.edge_agent_1_1;
    let base = "/properties/$edgeAgent/properties/properties.desired/properties/modules/patternProperties/^[a-zA-Z0-9_-]+$";
    let node = agent
        .schema_node(&format!(
            "{base}/properties/settings/$ref/additionalProperties"
        ))
        .expect("resolves");
    assert!(node["properties"]["image"].is_object(), "{node}");
    let node = agent
        .schema_node(&format!("{base}/properties/settings/additionalProperties"))
        .expect("resolves");
    assert!(
        node["properties"]["image"].is_object(),
        "a $ref node resolves to its target: {node}"
    );
    assert!(agent.schema_node("/no/such/place/required").is_none());
}

#[test]
fn messages_use_articles_and_list_allowed_names() {
    assert_eq!(article("object"), "an object");
    assert_eq!(
        article("number or string or boolean"),
        "a number or a string or an boolean".replace("an boolean", "a boolean")
    );
    assert_eq!(allowed_names(None), "remove it or correct its spelling");
    assert_eq!(
        allowed_names(Some(
            &json!({"properties": {"a": {}, "b": {}}, "patternProperties": {"^x$": {}}})
        )),
        "remove it or correct its name; allowed here: one of a, b, or a name matching ^x$"
    );
    assert_eq!(list(&json!(["running", "stopped"])), "running, stopped");
    assert_eq!(
        type_names(&TypeKind::Single(jsonschema::JsonType::String)),
        "string"
    );
}
