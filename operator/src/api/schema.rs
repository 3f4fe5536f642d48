//! Hand-written schema fragments for fields schemars cannot describe structurally.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An arbitrary JSON object kept as the user wrote it (deployment manifests).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
