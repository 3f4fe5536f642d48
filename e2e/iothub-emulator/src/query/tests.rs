//! Fixture-based tests of the public query API.

use super::*;
use serde_json::{Value, json};

/// Device twins as `GET /twins/{id}` returns them: a top edge device, a nested edge child, a
/// leaf, a plain device without tags, and a device whose id needs bracket syntax in tags.
fn device_twins() -> Vec<Value> {
    vec![
        json!({
            "deviceId": "top-layer",
            "etag": "AAAAAAAAAAE=",
            "version": 3,
            "status": "enabled",
            "capabilities": {"iotEdge": true},
            "deviceScope": "ms-azure-iot-edge://top-layer-637000000000000001",
            "parentScopes": [],
            "tags": {"edgeHierarchy": {"name": "tutorial", "layer": 1, "deployment": "top"},
                     "environment": "prod"},
            "properties": {
                "desired": {"$version": 4, "telemetry": {"interval": 30}},
                "reported": {"$version": 9, "firmware": "1.5.2", "temperature": 21.5}
            }
        }),
        json!({
            "deviceId": "lower-layer",
            "etag": "AAAAAAAAAAI=",
            "version": 2,
            "status": "enabled",
            "capabilities": {"iotEdge": true},
            "deviceScope": "ms-azure-iot-edge://lower-layer-637000000000000002",
            "parentScopes": ["ms-azure-iot-edge://top-layer-637000000000000001"],
            "tags": {"edgeHierarchy": {"name": "tutorial", "layer": 2, "deployment": "lower"},
                     "environment": "prod"},
            "properties": {
                "desired": {"$version": 1},
                "reported": {"$version": 1, "firmware": "1.4.0", "temperature": 19}
            }
        }),
        json!({
            "deviceId": "sensor-17",
            "etag": "AAAAAAAAAAE=",
            "version": 1,
            "status": "disabled",
            "capabilities": {"iotEdge": false},
            "deviceScope": "ms-azure-iot-edge://lower-layer-637000000000000002",
            "parentScopes": ["ms-azure-iot-edge://lower-layer-637000000000000002"],
            "tags": {"edgeHierarchy": {"name": "tutorial", "layer": 3}, "environment": null},
            "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}
        }),
        json!({
            "deviceId": "plain",
            "etag": "AAAAAAAAAAE=",
            "version": 1,
            "status": "enabled",
            "capabilities": {"iotEdge": false},
            "tags": {},
            "properties": {"desired": {"$version": 1}, "reported": {"$version": 1, "temperature": "hot"}}
        }),
        json!({
            "deviceId": "odd#id?(1)",
            "etag": "AAAAAAAAAAE=",
            "version": 1,
            "status": "enabled",
            "capabilities": {"iotEdge": false},
            "tags": {"plant-site": {"line no": 7}, "Environment": "prod"},
            "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}
        }),
    ]
}

/// Module twins: `$edgeAgent`/`$edgeHub` of both edge devices, with deployment status.
fn module_twins() -> Vec<Value> {
    vec![
        json!({
            "deviceId": "top-layer", "moduleId": "$edgeAgent", "etag": "AAAAAAAAAAM=", "version": 5,
            "configurations": {"tutorial-top-1a2b3c4d": {"status": "Applied"},
                               "monitoring": {"status": "Applied"}},
            "properties": {
                "desired": {"$version": 3, "schemaVersion": "1.1"},
                "reported": {"lastDesiredVersion": 3, "lastDesiredStatus": {"code": 200},
                             "modules": {"sensor": {"runtimeStatus": "running"}}}
            }
        }),
        json!({
            "deviceId": "top-layer", "moduleId": "$edgeHub", "etag": "AAAAAAAAAAE=", "version": 2,
            "configurations": {"tutorial-top-1a2b3c4d": {"status": "Applied"}},
            "properties": {"desired": {"$version": 2}, "reported": {"lastDesiredVersion": 2}}
        }),
        json!({
            "deviceId": "lower-layer", "moduleId": "$edgeAgent", "etag": "AAAAAAAAAAI=", "version": 4,
            "configurations": {"tutorial-top-1a2b3c4d": {"status": "Targeted"},
                               "tutorial-lower-9f8e7d6c": {"status": "Applied"}},
            "properties": {
                "desired": {"$version": 2},
                "reported": {"lastDesiredVersion": 2, "lastDesiredStatus": {"code": 500},
                             "modules": {"sensor": {"runtimeStatus": "backoff"}}}
            }
        }),
        json!({
            "deviceId": "lower-layer", "moduleId": "$edgeHub", "etag": "AAAAAAAAAAE=", "version": 1,
            "properties": {"desired": {"$version": 1}, "reported": {}}
        }),
    ]
}

/// The device ids a query over the device fixtures returns, in order.
fn device_ids(sql: &str) -> Vec<String> {
    let query = parse_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(query.collection(), Collection::Devices, "{sql}");
    query
        .execute(&device_twins())
        .iter()
        .map(|row| {
            row["deviceId"]
                .as_str()
                .expect("row without deviceId")
                .to_owned()
        })
        .collect()
}

/// The device ids a bare condition selects among the device fixtures.
fn condition_ids(condition: &str) -> Vec<String> {
    let parsed = parse_condition(condition).unwrap_or_else(|e| panic!("{condition}: {e}"));
    device_twins()
        .iter()
        .filter(|doc| parsed.matches(doc))
        .map(|doc| doc["deviceId"].as_str().unwrap().to_owned())
        .collect()
}

fn err(sql: &str) -> QueryError {
    match parse_query(sql) {
        Ok(q) => panic!("{sql} parsed but should not: {q:?}"),
        Err(e) => e,
    }
}

const ALL: [&str; 5] = [
    "top-layer",
    "lower-layer",
    "sensor-17",
    "plain",
    "odd#id?(1)",
];

#[test]
fn select_star_returns_every_document_unchanged() {
    let docs = device_twins();
    let query = parse_query("SELECT * FROM devices").unwrap();
    assert!(query.selects_whole_documents());
    assert_eq!(query.execute(&docs), docs);
    assert_eq!(query.execute(&[]), Vec::<Value>::new());
}

#[test]
fn keywords_are_case_insensitive() {
    assert_eq!(
        device_ids("select * from devices where deviceId = 'plain'"),
        ["plain"]
    );
    assert_eq!(
        device_ids("SeLeCt * FrOm DEVICES WhErE deviceId = 'plain'"),
        ["plain"]
    );
    assert_eq!(
        device_ids(
            "select * from devices where capabilities.iotEdge = TRUE and not tags.environment = 'x'"
        ),
        ["top-layer", "lower-layer"]
    );
}

#[test]
fn property_names_are_case_sensitive() {
    assert_eq!(
        device_ids("SELECT * FROM devices WHERE deviceid = 'plain'"),
        Vec::<String>::new()
    );
    assert_eq!(
        device_ids("SELECT * FROM devices WHERE tags.Environment = 'prod'"),
        ["odd#id?(1)"]
    );
    assert_eq!(
        device_ids("SELECT * FROM devices WHERE tags.environment = 'prod'"),
        ["top-layer", "lower-layer"]
    );
}

#[test]
fn equality_and_inequality_on_every_type() {
    let cases: &[(&str, &[&str])] = &[
        ("deviceId = 'top-layer'", &["top-layer"]),
        ("deviceId = \"top-layer\"", &["top-layer"]),
        (
            "deviceId != 'top-layer'",
            &["lower-layer", "sensor-17", "plain", "odd#id?(1)"],
        ),
        (
            "deviceId <> 'top-layer'",
            &["lower-layer", "sensor-17", "plain", "odd#id?(1)"],
        ),
        ("capabilities.iotEdge = true", &["top-layer", "lower-layer"]),
        (
            "capabilities.iotEdge = false",
            &["sensor-17", "plain", "odd#id?(1)"],
        ),
        (
            "capabilities.iotEdge != true",
            &["sensor-17", "plain", "odd#id?(1)"],
        ),
        ("tags.edgeHierarchy.layer = 2", &["lower-layer"]),
        ("tags.edgeHierarchy.layer = 2.0", &["lower-layer"]),
        ("tags.environment = null", &["sensor-17"]),
        ("status = 'disabled'", &["sensor-17"]),
        ("version = 3", &["top-layer"]),
        ("deviceId = 'odd#id?(1)'", &["odd#id?(1)"]),
        // The same value on both sides of a comparison between two properties.
        (
            "properties.desired.$version = properties.reported.$version",
            &["lower-layer", "sensor-17", "plain", "odd#id?(1)"],
        ),
    ];
    for (condition, expected) in cases {
        let sql = format!("SELECT * FROM devices WHERE {condition}");
        assert_eq!(device_ids(&sql), *expected, "{sql}");
        assert_eq!(condition_ids(condition), *expected, "condition {condition}");
    }
}

#[test]
fn ordering_comparisons() {
    let cases: &[(&str, &[&str])] = &[
        ("tags.edgeHierarchy.layer < 2", &["top-layer"]),
        (
            "tags.edgeHierarchy.layer <= 2",
            &["top-layer", "lower-layer"],
        ),
        ("tags.edgeHierarchy.layer > 2", &["sensor-17"]),
        (
            "tags.edgeHierarchy.layer >= 2",
            &["lower-layer", "sensor-17"],
        ),
        ("properties.reported.temperature > 20", &["top-layer"]),
        (
            "properties.reported.temperature >= 19",
            &["top-layer", "lower-layer"],
        ),
        (
            "properties.reported.temperature < 21.6",
            &["top-layer", "lower-layer"],
        ),
        // Strings compare ordinally.
        ("properties.reported.firmware >= '1.5'", &["top-layer"]),
        ("properties.reported.firmware < '1.5'", &["lower-layer"]),
        ("deviceId > 'p'", &["top-layer", "sensor-17", "plain"]),
        ("deviceId < 'p'", &["lower-layer", "odd#id?(1)"]),
        // Booleans order false < true.
        (
            "capabilities.iotEdge > false",
            &["top-layer", "lower-layer"],
        ),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn comparisons_across_types_never_match() {
    for condition in [
        "properties.reported.temperature = 'hot' AND properties.reported.temperature > 1",
        "tags.edgeHierarchy.layer = '2'",
        "tags.edgeHierarchy.layer != '2' AND deviceId = 'lower-layer'",
        "capabilities.iotEdge = 'true'",
        "capabilities.iotEdge = 1",
        "tags.environment != 'prod' AND deviceId = 'sensor-17'",
        "tags.edgeHierarchy = 'x'",
        "parentScopes = 'x'",
        "tags.edgeHierarchy != 'x'",
        "tags = tags",
    ] {
        assert_eq!(
            condition_ids(condition),
            Vec::<String>::new(),
            "{condition}"
        );
    }
}

#[test]
fn missing_properties_never_match_except_through_not_and_is_defined() {
    // `plain` and `odd#id?(1)` have no tags.edgeHierarchy; `plain` has no deviceScope.
    assert_eq!(
        condition_ids("tags.edgeHierarchy.name = 'tutorial'"),
        ["top-layer", "lower-layer", "sensor-17"]
    );
    assert_eq!(
        condition_ids("tags.edgeHierarchy.name != 'tutorial'"),
        Vec::<String>::new()
    );
    assert_eq!(
        condition_ids("tags.edgeHierarchy.name != 'other'"),
        ["top-layer", "lower-layer", "sensor-17"]
    );
    assert_eq!(
        condition_ids("tags.edgeHierarchy.name < 'zzz'"),
        ["top-layer", "lower-layer", "sensor-17"]
    );
    assert_eq!(
        condition_ids("NOT tags.edgeHierarchy.name = 'tutorial'"),
        ["plain", "odd#id?(1)"]
    );
    assert_eq!(
        condition_ids("NOT (tags.edgeHierarchy.name = 'tutorial')"),
        ["plain", "odd#id?(1)"]
    );
    assert_eq!(
        condition_ids("IS_DEFINED(deviceScope)"),
        ["top-layer", "lower-layer", "sensor-17"]
    );
    assert_eq!(
        condition_ids("NOT IS_DEFINED(deviceScope)"),
        ["plain", "odd#id?(1)"]
    );
    // null is defined.
    assert_eq!(
        condition_ids("IS_DEFINED(tags.environment) AND NOT capabilities.iotEdge"),
        ["sensor-17"]
    );
    // A path through a non-object is undefined.
    assert_eq!(
        condition_ids("IS_DEFINED(deviceId.length)"),
        Vec::<String>::new()
    );
    assert_eq!(
        condition_ids("tags.environment.x = null"),
        Vec::<String>::new()
    );
    // The undefined constant.
    assert_eq!(condition_ids("deviceId = undefined"), Vec::<String>::new());
    assert_eq!(condition_ids("IS_DEFINED(undefined)"), Vec::<String>::new());
}

#[test]
fn non_boolean_conditions_are_false() {
    assert_eq!(condition_ids("deviceId"), Vec::<String>::new());
    assert_eq!(condition_ids("'text'"), Vec::<String>::new());
    assert_eq!(condition_ids("null"), Vec::<String>::new());
    assert_eq!(condition_ids("1"), Vec::<String>::new());
    assert_eq!(
        condition_ids("capabilities.iotEdge"),
        ["top-layer", "lower-layer"]
    );
    assert_eq!(condition_ids("true"), ALL);
    assert_eq!(condition_ids("NOT deviceId"), ALL);
}

#[test]
fn and_or_not_with_precedence_and_parentheses() {
    let cases: &[(&str, &[&str])] = &[
        // AND binds tighter than OR.
        (
            "deviceId = 'plain' OR capabilities.iotEdge = true AND tags.edgeHierarchy.layer = 2",
            &["lower-layer", "plain"],
        ),
        (
            "(deviceId = 'plain' OR capabilities.iotEdge = true) AND tags.edgeHierarchy.layer = 2",
            &["lower-layer"],
        ),
        // NOT binds tighter than AND, looser than comparison.
        (
            "NOT capabilities.iotEdge = true AND status = 'enabled'",
            &["plain", "odd#id?(1)"],
        ),
        (
            "NOT (capabilities.iotEdge = true AND status = 'enabled')",
            &["sensor-17", "plain", "odd#id?(1)"],
        ),
        ("NOT NOT deviceId = 'plain'", &["plain"]),
        (
            "not(deviceId = 'plain')",
            &["top-layer", "lower-layer", "sensor-17", "odd#id?(1)"],
        ),
        ("((deviceId = 'plain'))", &["plain"]),
        (
            "deviceId = 'a' OR deviceId = 'plain' OR deviceId = 'sensor-17'",
            &["sensor-17", "plain"],
        ),
        (
            "status = 'enabled' AND capabilities.iotEdge = true AND tags.environment = 'prod'",
            &["top-layer", "lower-layer"],
        ),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn in_and_nin() {
    let cases: &[(&str, &[&str])] = &[
        (
            "deviceId IN ['plain', 'top-layer', 'absent']",
            &["top-layer", "plain"],
        ),
        ("deviceId in [\"plain\"]", &["plain"]),
        (
            "tags.edgeHierarchy.layer IN [1, 3]",
            &["top-layer", "sensor-17"],
        ),
        ("tags.edgeHierarchy.layer IN ['1', '3']", &[]),
        ("tags.environment IN [null, 'x']", &["sensor-17"]),
        (
            "capabilities.iotEdge IN [true]",
            &["top-layer", "lower-layer"],
        ),
        ("deviceId IN []", &[]),
        ("tags.edgeHierarchy.layer IN [-1, 2]", &["lower-layer"]),
        ("tags.edgeHierarchy.layer NIN [1, 3]", &["lower-layer"]),
        // A missing property is in no list and not outside any list either.
        (
            "tags.edgeHierarchy.deployment NIN ['top']",
            &["lower-layer"],
        ),
        (
            "NOT tags.edgeHierarchy.deployment IN ['top']",
            &["lower-layer", "sensor-17", "plain", "odd#id?(1)"],
        ),
        // Objects and arrays are never in a list of constants.
        ("parentScopes IN ['x']", &[]),
        ("parentScopes NIN ['x']", &[]),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn string_functions() {
    let cases: &[(&str, &[&str])] = &[
        ("STARTSWITH(deviceId, 'top')", &["top-layer"]),
        (
            "startswith(deviceScope, 'ms-azure-iot-edge://lower')",
            &["lower-layer", "sensor-17"],
        ),
        ("STARTS_WITH(deviceId, 'p')", &["plain"]),
        (
            "ENDSWITH(deviceId, '-layer')",
            &["top-layer", "lower-layer"],
        ),
        ("ENDS_WITH(deviceId, '(1)')", &["odd#id?(1)"]),
        ("CONTAINS(deviceId, 'layer')", &["top-layer", "lower-layer"]),
        ("STARTSWITH(deviceId, '')", &ALL),
        // Non-strings and missing properties never match.
        ("STARTSWITH(tags.edgeHierarchy.layer, '1')", &[]),
        ("STARTSWITH(deviceScope, tags.missing)", &[]),
        (
            "NOT STARTSWITH(deviceScope, 'ms')",
            &["plain", "odd#id?(1)"],
        ),
        (
            "LOWER(status) = 'disabled' AND UPPER(deviceId) = 'SENSOR-17'",
            &["sensor-17"],
        ),
        ("LENGTH(deviceId) = 5", &["plain"]),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn type_and_array_functions() {
    let cases: &[(&str, &[&str])] = &[
        ("IS_NULL(tags.environment)", &["sensor-17"]),
        ("IS_STRING(tags.environment)", &["top-layer", "lower-layer"]),
        (
            "IS_NUMBER(properties.reported.temperature)",
            &["top-layer", "lower-layer"],
        ),
        ("IS_STRING(properties.reported.temperature)", &["plain"]),
        ("IS_BOOL(capabilities.iotEdge)", &ALL),
        (
            "IS_OBJECT(tags.edgeHierarchy)",
            &["top-layer", "lower-layer", "sensor-17"],
        ),
        (
            "IS_ARRAY(parentScopes)",
            &["top-layer", "lower-layer", "sensor-17"],
        ),
        (
            "IS_PRIMITIVE(tags.environment)",
            &["top-layer", "lower-layer", "sensor-17"],
        ),
        // az CLI's children query.
        (
            "ARRAY_CONTAINS(parentScopes, 'ms-azure-iot-edge://top-layer-637000000000000001')",
            &["lower-layer"],
        ),
        ("array_contains(parentScopes, deviceScope)", &["sensor-17"]),
        ("ARRAY_LENGTH(parentScopes) = 0", &["top-layer"]),
        (
            "ARRAY_LENGTH(parentScopes) > 0",
            &["lower-layer", "sensor-17"],
        ),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn arithmetic() {
    let cases: &[(&str, &[&str])] = &[
        ("tags.edgeHierarchy.layer + 1 = 3", &["lower-layer"]),
        ("tags.edgeHierarchy.layer * 2 - 1 = 5", &["sensor-17"]),
        ("tags.edgeHierarchy.layer / 2 = 0.5", &["top-layer"]),
        (
            "tags.edgeHierarchy.layer % 2 = 1",
            &["top-layer", "sensor-17"],
        ),
        ("-tags.edgeHierarchy.layer = -2", &["lower-layer"]),
        ("tags.edgeHierarchy.layer = 0x2", &["lower-layer"]),
        ("tags.edgeHierarchy.layer / 0 = 1", &[]),
        ("deviceId + 1 = 1", &[]),
        ("properties.reported.temperature - 1.5 = 20", &["top-layer"]),
        ("2 + 3 * 2 = 8 AND deviceId = 'plain'", &["plain"]),
        ("(2 + 3) * 2 = 10 AND deviceId = 'plain'", &["plain"]),
        // A hyphen is subtraction, so a name with one needs brackets: tags.[[plant-site]].
        ("tags.plant-site = 0", &[]),
    ];
    for (condition, expected) in cases {
        assert_eq!(condition_ids(condition), *expected, "{condition}");
    }
}

#[test]
fn bracketed_segments_reach_ids_with_special_characters() {
    assert_eq!(
        condition_ids("tags.[[plant-site]].[[line no]] = 7"),
        ["odd#id?(1)"]
    );
    assert_eq!(
        condition_ids("tags.[[edgeHierarchy]].layer = 1"),
        ["top-layer"]
    );
    let modules = module_twins();
    let applied = parse_query(
        "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' \
         AND configurations.[[tutorial-top-1a2b3c4d]].status = 'Applied'",
    )
    .unwrap();
    assert_eq!(applied.collection(), Collection::DevicesModules);
    assert_eq!(
        applied.execute(&modules),
        vec![json!({"deviceId": "top-layer"})]
    );
}

#[test]
fn module_queries_over_devices_modules() {
    let modules = module_twins();
    let run = |sql: &str| -> Vec<Value> {
        let q = parse_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(q.collection(), Collection::DevicesModules);
        q.execute(&modules)
    };
    assert_eq!(
        run("SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'"),
        vec![modules[0].clone(), modules[2].clone()]
    );
    assert_eq!(
        run("select deviceId, moduleId from DEVICES.MODULES where deviceId = 'lower-layer'"),
        vec![
            json!({"deviceId": "lower-layer", "moduleId": "$edgeAgent"}),
            json!({"deviceId": "lower-layer", "moduleId": "$edgeHub"}),
        ]
    );
    // IoT Hub's own system-metric queries for an edge deployment.
    let success = "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' \
        AND configurations.[[tutorial-lower-9f8e7d6c]].status = 'Applied' \
        AND properties.desired.$version = properties.reported.lastDesiredVersion \
        AND properties.reported.lastDesiredStatus.code = 200";
    assert_eq!(run(success), Vec::<Value>::new());
    let failure = success.replace("code = 200", "code != 200");
    assert_eq!(run(&failure), vec![json!({"deviceId": "lower-layer"})]);
    assert_eq!(
        run(
            "SELECT deviceId, properties.reported.modules.sensor.runtimeStatus AS sensor \
             FROM devices.modules WHERE IS_DEFINED(properties.reported.modules.sensor)"
        ),
        vec![
            json!({"deviceId": "top-layer", "sensor": "running"}),
            json!({"deviceId": "lower-layer", "sensor": "backoff"}),
        ]
    );
}

#[test]
fn projections_name_rows_after_the_last_segment_or_the_alias() {
    let docs = device_twins();
    let q = parse_query(
        "SELECT deviceId, tags.edgeHierarchy.layer, deviceScope AS scope, tags.[[plant-site]] \
         FROM devices WHERE capabilities.iotEdge = true OR deviceId = 'plain'",
    )
    .unwrap();
    assert!(!q.selects_whole_documents());
    assert_eq!(
        q.execute(&docs),
        vec![
            json!({"deviceId": "top-layer", "layer": 1, "scope": "ms-azure-iot-edge://top-layer-637000000000000001"}),
            json!({"deviceId": "lower-layer", "layer": 2, "scope": "ms-azure-iot-edge://lower-layer-637000000000000002"}),
            // Undefined values are left out of the row.
            json!({"deviceId": "plain"}),
        ]
    );
    let q = parse_query("SELECT tags, tags.edgeHierarchy.layer * 10 AS weight, deviceId = 'plain', 'x' FROM devices WHERE deviceId IN ['plain', 'sensor-17']").unwrap();
    assert_eq!(
        q.execute(&docs),
        vec![
            json!({"tags": docs[2]["tags"], "weight": 30, "$1": false, "$2": "x"}),
            json!({"tags": {}, "$1": true, "$2": "x"}),
        ]
    );
}

#[test]
fn aggregates() {
    let docs = device_twins();
    let run = |sql: &str| {
        parse_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .execute(&docs)
    };
    assert_eq!(
        run("SELECT COUNT() AS n FROM devices"),
        vec![json!({"n": 5})]
    );
    assert_eq!(
        run("select count() as edges from devices where capabilities.iotEdge = true"),
        vec![json!({"edges": 2})]
    );
    assert_eq!(
        run("SELECT COUNT() AS n FROM devices WHERE deviceId = 'none'"),
        vec![json!({"n": 0})]
    );
    assert_eq!(run("SELECT COUNT() FROM devices"), vec![json!({"$1": 5})]);
    assert_eq!(
        run(
            "SELECT SUM(tags.edgeHierarchy.layer) AS total, AVG(tags.edgeHierarchy.layer) AS mean, \
             MIN(properties.reported.temperature) AS low, MAX(properties.reported.firmware) AS newest, \
             COUNT() AS n FROM devices"
        ),
        vec![json!({"total": 6, "mean": 2, "low": 19, "newest": "1.5.2", "n": 5})]
    );
    // AVG/MIN/MAX of nothing are undefined and left out; SUM of nothing is 0.
    assert_eq!(
        run(
            "SELECT SUM(tags.none) AS s, AVG(tags.none) AS a, MIN(tags.none) AS lo, MAX(tags.none) AS hi FROM devices"
        ),
        vec![json!({"s": 0})]
    );
    let q = parse_query("SELECT COUNT() AS n FROM devices").unwrap();
    assert!(!q.selects_whole_documents());
}

#[test]
fn top_limits_the_rows() {
    assert_eq!(
        device_ids("SELECT TOP 2 * FROM devices"),
        ["top-layer", "lower-layer"]
    );
    assert_eq!(
        device_ids("select top 1 deviceId from devices where capabilities.iotEdge = false"),
        ["sensor-17"]
    );
    assert_eq!(
        device_ids("SELECT TOP 0 * FROM devices"),
        Vec::<String>::new()
    );
    assert_eq!(device_ids("SELECT TOP 100 * FROM devices"), ALL);
}

#[test]
fn string_literals_with_quotes_and_escapes() {
    let docs = [
        json!({"deviceId": "it's", "tags": {"q": "say \"hi\"", "u": "Ä\\"}}),
        json!({"deviceId": "other", "tags": {}}),
    ];
    let ids = |condition: &str| -> Vec<Value> {
        let c = parse_condition(condition).unwrap_or_else(|e| panic!("{condition}: {e}"));
        docs.iter()
            .filter(|d| c.matches(d))
            .map(|d| d["deviceId"].clone())
            .collect()
    };
    assert_eq!(ids("deviceId = 'it''s'"), vec![json!("it's")]);
    assert_eq!(ids("deviceId = 'it\\'s'"), vec![json!("it's")]);
    assert_eq!(ids("deviceId = \"it's\""), vec![json!("it's")]);
    assert_eq!(ids("tags.q = 'say \"hi\"'"), vec![json!("it's")]);
    assert_eq!(ids("tags.q = \"say \\\"hi\\\"\""), vec![json!("it's")]);
    assert_eq!(ids("tags.u = '\\u00c4\\\\'"), vec![json!("it's")]);
}

#[test]
fn conditions_for_configurations() {
    assert_eq!(
        condition_ids(
            "tags.edgeHierarchy.name='tutorial' and tags.edgeHierarchy.deployment='lower'"
        ),
        ["lower-layer"]
    );
    assert_eq!(condition_ids("deviceId='top-layer'"), ["top-layer"]);
    assert_eq!(condition_ids("  *  "), ALL);
    assert_eq!(
        condition_ids("deviceId IN ['top-layer','lower-layer']"),
        ["top-layer", "lower-layer"]
    );
    let e = parse_condition("").unwrap_err();
    assert_eq!(
        (e.position, e.message.as_str()),
        (0, "the condition is empty")
    );
    let e = parse_condition("   ").unwrap_err();
    assert_eq!(e.position, 3);
    let e = parse_condition("SELECT * FROM devices").unwrap_err();
    assert_eq!(e.position, 0);
    let e = parse_condition("tags.a = 1 tags.b = 2").unwrap_err();
    assert_eq!(e.position, 11);
    assert!(
        e.message.contains("AND, OR or the end of the condition"),
        "{}",
        e.message
    );
}

/// Every rejected input, with the character offset of the token the error must point at.
#[test]
fn errors_point_at_the_offending_token() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "expected SELECT"),
        ("DELETE FROM devices", 0, "expected SELECT"),
        (
            "SELECT * FROM devices GROUP BY deviceId",
            22,
            "GROUP BY is not supported",
        ),
        (
            "SELECT COUNT() AS n FROM devices WHERE status = 'enabled' group by status",
            58,
            "GROUP BY is not supported",
        ),
        (
            "SELECT * FROM devices ORDER BY deviceId",
            22,
            "ORDER BY is not supported",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'a' ORDER BY deviceId",
            43,
            "ORDER BY is not supported",
        ),
        (
            "SELECT * FROM devices JOIN devices.modules",
            22,
            "JOIN is not supported",
        ),
        (
            "SELECT DISTINCT deviceId FROM devices",
            7,
            "DISTINCT is not supported",
        ),
        (
            "SELECT * FROM devices.jobs",
            14,
            "devices.jobs is not supported",
        ),
        (
            "SELECT * FROM twins",
            14,
            "the collection devices or devices.modules",
        ),
        (
            "SELECT * FROM devices.things",
            22,
            "unknown collection devices.things",
        ),
        (
            "SELECT * FROM devices d",
            22,
            "expected WHERE or the end of the query",
        ),
        ("SELECT * devices", 9, "expected FROM"),
        ("SELECT deviceId devices", 16, "expected ',' or FROM"),
        (
            "SELECT *, deviceId FROM devices",
            8,
            "SELECT * cannot be combined",
        ),
        ("SELECT FROM devices", 7, "keyword FROM"),
        (
            "SELECT TOP x * FROM devices",
            11,
            "TOP must be followed by a whole number",
        ),
        (
            "SELECT TOP 1.5 * FROM devices",
            11,
            "TOP must be followed by a whole number",
        ),
        (
            "SELECT deviceId, COUNT() AS n FROM devices",
            7,
            "together with an aggregate",
        ),
        (
            "SELECT COUNT(*) FROM devices",
            13,
            "COUNT takes no argument",
        ),
        (
            "SELECT deviceId, deviceId FROM devices",
            17,
            "selected twice",
        ),
        (
            "SELECT deviceId AS FROM devices",
            19,
            "expected a name after AS",
        ),
        (
            "SELECT * FROM devices WHERE",
            27,
            "expected a value, a property or a function",
        ),
        (
            "SELECT * FROM devices WHERE deviceId =",
            38,
            "expected a value, a property or a function",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'a' AND",
            46,
            "expected a value",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'a' deviceId = 'b'",
            43,
            "expected AND, OR or the end of the query",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'a' = 'b'",
            43,
            "found '='",
        ),
        (
            "SELECT * FROM devices WHERE (deviceId = 'a'",
            43,
            "expected ')'",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'a')",
            42,
            "found ')'",
        ),
        (
            "SELECT * FROM devices WHERE tags. = 1",
            34,
            "expected a property name",
        ),
        (
            "SELECT * FROM devices WHERE tags..a = 1",
            33,
            "expected a property name",
        ),
        (
            "SELECT * FROM devices WHERE tags.plant site = 1",
            39,
            "expected AND, OR",
        ),
        (
            "SELECT * FROM devices WHERE REGEX(deviceId, 'a')",
            28,
            "the function REGEX is not supported",
        ),
        (
            "SELECT * FROM devices WHERE COUNT() > 1",
            28,
            "only allowed in the SELECT list",
        ),
        (
            "SELECT * FROM devices WHERE IS_DEFINED()",
            28,
            "IS_DEFINED takes 1 argument(s), 0 given",
        ),
        (
            "SELECT * FROM devices WHERE STARTSWITH(deviceId)",
            28,
            "STARTSWITH takes 2 argument(s), 1 given",
        ),
        (
            "SELECT * FROM devices WHERE IS_DEFINED(a b)",
            41,
            "expected ',' or ')'",
        ),
        (
            "SELECT * FROM devices WHERE deviceId IN 'a'",
            40,
            "IN and NIN expect a list of constants",
        ),
        (
            "SELECT * FROM devices WHERE deviceId IN ['a', tags.x]",
            46,
            "array elements must be constants",
        ),
        (
            "SELECT * FROM devices WHERE deviceId IN ['a' 'b']",
            45,
            "expected ',' or ']'",
        ),
        (
            "SELECT * FROM devices WHERE deviceId IN ['a',",
            45,
            "array elements must be constants",
        ),
        (
            "SELECT * FROM devices WHERE deviceId NOT IN ['a']",
            37,
            "write NIN",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = 'open",
            39,
            "not closed",
        ),
        (
            "SELECT * FROM devices WHERE deviceId = #",
            39,
            "unexpected character '#'",
        ),
        (
            "SELECT * FROM devices WHERE tags.x = 1 HAVING",
            39,
            "HAVING is not supported",
        ),
        (
            "SELECT * FROM devices WHERE select = 1",
            28,
            "keyword SELECT",
        ),
        // Positions count characters, not bytes.
        (
            "SELECT * FROM devices WHERE tags.ü = 'é' GROUP BY x",
            41,
            "GROUP BY",
        ),
    ];
    for (sql, position, fragment) in cases {
        let e = err(sql);
        assert_eq!(e.position, *position, "position for {sql:?}: {e}");
        assert!(
            e.message.contains(fragment),
            "message for {sql:?} was {:?}",
            e.message
        );
    }
}

#[test]
fn keywords_after_a_dot_are_property_names() {
    let docs = [
        json!({"deviceId": "d", "tags": {"from": 1, "select": {"where": true}, "null": 2, "größe": 3}}),
    ];
    let q = parse_query(
        "SELECT tags.from FROM devices WHERE tags.select.where = true AND tags.null = 2",
    )
    .unwrap();
    assert_eq!(q.execute(&docs), vec![json!({"from": 1})]);
    // Non-ASCII letters are name characters.
    let q = parse_query("SELECT tags.größe FROM devices").unwrap();
    assert_eq!(q.execute(&docs), vec![json!({"größe": 3})]);
}

#[test]
fn error_display_names_the_position() {
    let e = err("SELECT * FROM devices ORDER BY deviceId");
    assert_eq!(
        e.to_string(),
        "syntax error at character 22: ORDER BY is not supported by the emulator"
    );
}

#[test]
fn large_integers_compare_exactly() {
    let docs = vec![
        json!({"deviceId": "a", "generation": 637000000000000001u64}),
        json!({"deviceId": "b", "generation": 637000000000000002u64}),
    ];
    let q =
        parse_query("SELECT deviceId FROM devices WHERE generation = 637000000000000002").unwrap();
    assert_eq!(q.execute(&docs), vec![json!({"deviceId": "b"})]);
    let q =
        parse_query("SELECT deviceId FROM devices WHERE generation < 637000000000000002").unwrap();
    assert_eq!(q.execute(&docs), vec![json!({"deviceId": "a"})]);
}

#[test]
fn bad_input_never_panics() {
    // A crude fuzz: every prefix of a set of tricky queries must parse or fail cleanly, and the
    // error position must lie within the input.
    let samples = [
        "SELECT TOP 3 deviceId AS id, COUNT() FROM devices.modules WHERE NOT (a.[[b-c]] IN ['x', -1, 0x1F, null]) OR STARTSWITH(x, \"y\\u0041\") AND z <> 2.5e3",
        "select * from devices where tags.a = 'it''s' and properties.reported.$version >= -.5",
        "[[ ]] ]] [ ( ) ' \" \\ é ü 0x 1e .",
    ];
    for sample in samples {
        let chars: Vec<char> = sample.chars().collect();
        for end in 0..=chars.len() {
            let prefix: String = chars[..end].iter().collect();
            let errors = [parse_query(&prefix).err(), parse_condition(&prefix).err()];
            for e in errors.into_iter().flatten() {
                assert!(e.position <= end, "{prefix:?}: {e}");
            }
        }
    }
}
