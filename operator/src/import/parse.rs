//! What both input formats have in common once read, and reading them: format detection,
//! deserialization that keeps serde_yaml's line numbers and records unknown keys.

use serde::de::DeserializeOwned;

use super::lines::Lines;
use super::{Format, ImportError, ImportErrors, Place};
use crate::api::AuthenticationType;

/// Key names of one format, for field paths in messages and for finding their lines.
pub(crate) struct Keys {
    pub device_id: &'static str,
    pub deployment: &'static str,
    pub edge_agent: &'static str,
    pub hostname: &'static str,
    pub children: &'static str,
    pub container_auth: &'static str,
    /// Full paths of the top-level settings.
    pub authentication: &'static str,
    pub config_version: &'static str,
    pub hub_name: &'static str,
    pub certificates: &'static str,
    pub root_cert: &'static str,
    pub root_key: &'static str,
    pub template: &'static str,
    pub default_agent: &'static str,
    /// The known keys of each level, to suggest one for a misspelt key.
    pub known: &'static [&'static str],
}

/// One device of the config's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    /// Field path of the device (`edgedevices.child[0]`, `edgeDevices[1].children[0]`).
    pub path: String,
    pub id: String,
    pub hostname: Option<String>,
    pub edge_agent: Option<String>,
    pub deployment: Option<String>,
    /// Registry credentials for the bootstrap edgeAgent pull, as given (the password only as
    /// "given": it never goes into the output).
    pub container_auth: Option<ContainerLogin>,
    pub children: Vec<Device>,
}

/// A device's `container_auth` / `containerAuth`, without its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerLogin {
    pub server_address: Option<String>,
    pub username: Option<String>,
    pub has_password: bool,
}

/// A config of either format, read.
pub(crate) struct Parsed {
    pub format: Format,
    pub keys: &'static Keys,
    pub hub_name: Option<String>,
    pub authentication: AuthenticationType,
    /// Root CA certificate and key paths as written.
    pub root_ca: Option<(String, String)>,
    pub template: Option<String>,
    pub default_agent: Option<String>,
    pub roots: Vec<Device>,
    /// Field paths of keys the format does not have.
    pub unknown: Vec<String>,
}

/// An empty string counts as absent, as both tools treat it (`if device.hostname:`).
/// Both formats know only config version 1.0; `tool` is the program that writes the format.
pub(crate) fn check_version(
    source: &Source,
    keys: &Keys,
    version: &str,
    tool: &str,
) -> Result<(), ImportErrors> {
    if version.trim() == "1.0" {
        return Ok(());
    }
    let field = keys.config_version;
    Err(source.fail(
        field,
        None,
        format!("{field} {version:?} is not one this import reads"),
        format!("{tool} knows only {field} \"1.0\"; write that"),
    ))
}

/// The authentication method in the format's own spelling: `methods` names symmetric key first,
/// X.509 second.
pub(crate) fn authentication(
    source: &Source,
    keys: &Keys,
    method: &str,
    methods: [&str; 2],
) -> Result<AuthenticationType, ImportErrors> {
    match method.trim() {
        m if m == methods[0] => Ok(AuthenticationType::SymmetricKey),
        m if m == methods[1] => Ok(AuthenticationType::X509),
        other => {
            let field = keys.authentication.rsplit('.').next().unwrap_or_default();
            Err(source.fail(
                keys.authentication,
                None,
                format!("unknown {field} {other:?}"),
                format!("use {} or {}", methods[0], methods[1]),
            ))
        }
    }
}

pub(crate) fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// The config text, its file name for messages, and the lines of its keys.
pub(crate) struct Source<'a> {
    pub file: String,
    pub text: &'a str,
    pub lines: Lines<'a>,
    pub json: bool,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: String, text: &'a str) -> Self {
        let trimmed = text.trim_start_matches('\u{feff}').trim_start();
        Source {
            file,
            text: text.trim_start_matches('\u{feff}'),
            lines: Lines::new(text),
            json: trimmed.starts_with('{'),
        }
    }

    /// The place of a field: its line when it can be found.
    pub(crate) fn place(&self, path: &str, value: Option<&str>, occurrence: usize) -> Place {
        Place {
            file: self.file.clone(),
            line: self.lines.line(path, value, occurrence),
            column: None,
        }
    }

    /// [`Source::error`] as the error of a whole parse.
    pub(crate) fn fail(
        &self,
        path: &str,
        value: Option<&str>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ImportErrors {
        self.error(path, value, problem, fix).into()
    }

    pub(crate) fn error(
        &self,
        path: &str,
        value: Option<&str>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ImportError {
        ImportError {
            place: self.place(path, value, 0),
            field: path.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Which of the two formats the text is, from its top-level keys.
    pub(crate) fn detect(&self) -> Result<Format, ImportErrors> {
        let top: Result<serde_yaml::Value, ImportError> = if self.json {
            serde_json::from_str::<serde_yaml::Value>(self.text).map_err(|e| self.json_error(&e))
        } else {
            serde_yaml::from_str(self.text).map_err(|e| self.yaml_error(&e))
        };
        let top = top?;
        let Some(map) = top.as_mapping() else {
            return Err(ImportErrors::from(ImportError {
                place: Place::file(&self.file),
                field: String::new(),
                problem: "the file does not hold a YAML mapping".into(),
                fix: "pass the tool's iotedge_config.yaml or an `az iot edge devices create --cfg` file".into(),
            }));
        };
        let has = |k: &str| map.contains_key(k);
        if has("edgedevices") || has("config_version") || has("iothub") {
            Ok(Format::IotedgeConfig)
        } else if has("edgeDevices") || has("configVersion") || has("iotHub") {
            Ok(Format::AzDevicesConfig)
        } else {
            Err(ImportErrors::from(ImportError {
                place: Place::file(&self.file),
                field: String::new(),
                problem: "the file is neither an iotedge_config_cli config (no edgedevices, config_version or iothub key) \
                          nor an `az iot edge devices create --cfg` config (no edgeDevices, configVersion or iotHub key)"
                    .into(),
                fix: "pass the tool's iotedge_config.yaml or an `az iot edge devices create --cfg` file".into(),
            }))
        }
    }

    /// Deserializes the whole text into `T`, recording the paths of keys `T` does not know.
    pub(crate) fn deserialize<T: DeserializeOwned>(
        &self,
    ) -> Result<(T, Vec<String>), ImportErrors> {
        let mut unknown = Vec::new();
        let record = |path: serde_ignored::Path| unknown.push(field_path(&path));
        let value = if self.json {
            let mut de = serde_json::Deserializer::from_str(self.text);
            serde_ignored::deserialize(&mut de, record).map_err(|e| self.json_error(&e))?
        } else {
            let de = serde_yaml::Deserializer::from_str(self.text);
            serde_ignored::deserialize(de, record).map_err(|e| self.yaml_error(&e))?
        };
        Ok((value, unknown))
    }

    fn yaml_error(&self, e: &serde_yaml::Error) -> ImportError {
        let text = e.to_string();
        // serde_yaml writes "path: problem at line L column C"; the place goes in front instead.
        let text = match text.rfind(" at line ") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        let (field, problem) = match text.split_once(": ") {
            Some((field, problem)) if !field.contains(' ') => {
                (field.to_string(), problem.to_string())
            }
            _ => (String::new(), text),
        };
        ImportError {
            place: Place {
                file: self.file.clone(),
                line: e.location().map(|l| l.line()),
                column: e.location().map(|l| l.column()),
            },
            fix: fix_for(&problem),
            field,
            problem,
        }
    }

    fn json_error(&self, e: &serde_json::Error) -> ImportError {
        let text = e.to_string();
        let problem = match text.rfind(" at line ") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        ImportError {
            place: Place {
                file: self.file.clone(),
                line: Some(e.line()),
                column: Some(e.column()),
            },
            field: String::new(),
            fix: fix_for(&problem),
            problem,
        }
    }
}

/// The fix for a deserialization problem, by its kind.
fn fix_for(problem: &str) -> String {
    if let Some(rest) = problem.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        format!("add `{field}` here")
    } else if problem.starts_with("invalid type") {
        if problem.contains("expected a string") {
            "write the value as a string (quote it)".into()
        } else if problem.contains("expected a sequence") {
            "write the value as a list (`- item` lines)".into()
        } else {
            "correct the value's type".into()
        }
    } else if problem.contains("duplicate field") || problem.contains("duplicate entry") {
        "write each key once in a mapping".into()
    } else {
        "correct the file's syntax at this place".into()
    }
}

/// serde_ignored's path in the `a.b[0].c` form the messages use.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// The known key closest to `key` when it is a likely misspelling (edit distance at most 2, or
/// the same letters without separators and case).
pub(crate) fn suggestion<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let fold = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    known
        .iter()
        .map(|k| {
            let d = if fold(k) == fold(key) {
                0
            } else {
                edit_distance(k, key)
            };
            (d, *k)
        })
        .filter(|(d, k)| *d <= 2.min(k.len() / 2) && *k != key)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}
