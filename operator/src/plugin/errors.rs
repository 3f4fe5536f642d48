//! Errors of the kubectl plugin, in one line the way kubectl words them.
//!
//! kube's own `Display` of an apiserver answer is the whole Status struct in Rust debug form;
//! a user wants what kubectl says: `edgehierarchy "nope" not found in namespace "iot"`.

/// What the plugin was reading or writing when the apiserver answered with an error.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Singular lower-case kind, as kubectl prints it (`edgehierarchy`, `secret`).
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

/// One line describing `error` for `target`, with the next step where there is an obvious one.
pub fn describe(target: Target<'_>, error: &kube::Error) -> String {
    let Target {
        kind,
        name,
        namespace,
    } = target;
    match error {
        kube::Error::Api(status) if status.is_not_found() => {
            let hint = if kind == "edgehierarchy" {
                format!("; list them with `kubectl get edgehierarchies -n {namespace}`")
            } else {
                String::new()
            };
            format!("{kind} {name:?} not found in namespace {namespace:?}{hint}")
        }
        kube::Error::Api(status) if status.is_forbidden() => format!(
            "forbidden: {}; ask for access to {kind} {name:?} in namespace {namespace:?}",
            first_line(&status.message)
        ),
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                format!("HTTP {}", status.code)
            } else {
                status.reason.clone()
            };
            format!(
                "the server refused {kind} {name:?} in namespace {namespace:?} ({reason}): {}",
                first_line(&status.message)
            )
        }
        other => format!(
            "cannot reach the Kubernetes API for {kind} {name:?} in namespace {namespace:?}: {}",
            first_line(&other.to_string())
        ),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    const TARGET: Target<'static> = Target {
        kind: "edgehierarchy",
        name: "nope",
        namespace: "iot",
    };

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        let mut status = Status::failure(message, reason);
        status.code = code;
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn not_found_reads_like_kubectl_in_one_line() {
        let text = describe(
            TARGET,
            &api(
                404,
                "NotFound",
                "edgehierarchies.edgehierarchy.dev \"nope\" not found",
            ),
        );
        assert_eq!(
            text,
            "edgehierarchy \"nope\" not found in namespace \"iot\"; list them with `kubectl get edgehierarchies -n iot`"
        );
    }

    #[test]
    fn a_missing_secret_has_no_hierarchy_hint() {
        let target = Target {
            kind: "secret",
            ..TARGET
        };
        let text = describe(target, &api(404, "NotFound", "secrets \"nope\" not found"));
        assert_eq!(text, "secret \"nope\" not found in namespace \"iot\"");
    }

    #[test]
    fn forbidden_keeps_the_apiservers_reason() {
        let text = describe(
            TARGET,
            &api(
                403,
                "Forbidden",
                "edgehierarchies.edgehierarchy.dev \"nope\" is forbidden: User \"bob\" cannot get resource",
            ),
        );
        assert!(text.starts_with("forbidden: edgehierarchies"), "{text}");
        assert!(text.contains("User \"bob\""), "{text}");
        assert!(!text.contains("Status {"), "{text}");
    }

    #[test]
    fn other_answers_name_the_reason_and_stay_on_one_line() {
        let text = describe(
            TARGET,
            &api(
                422,
                "Invalid",
                "metadata.annotations: Invalid value\nsecond line",
            ),
        );
        assert_eq!(
            text,
            "the server refused edgehierarchy \"nope\" in namespace \"iot\" (Invalid): metadata.annotations: Invalid value"
        );
    }
}
