//! `import`: the config of the tool people come from, converted to what this operator reads.
//!
//! Two inputs, told apart by their top-level keys:
//! - [`iotedge_config`]: the tutorial tool's `iotedge_config.yaml` (`iotedge_config_cli`,
//!   config_version 1.0), one nested device tree under `edgedevices`.
//! - [`az_cfg`]: the `az iot edge devices create --cfg` file (YAML or JSON, configVersion 1.0),
//!   a list of trees under `edgeDevices`.
//!
//! The output ([`output::render`]) is one multi-document YAML for `kubectl apply` or Git: the
//! `EdgeHierarchy` (the tree flattened, ids kept, each device naming its parent), one ConfigMap
//! per deployment JSON file, and comments with the commands that create the two Secrets it names
//! (the hub's connection string and, when the config gives one, the root CA), since keys do not
//! belong in a file meant for Git.
//!
//! Pure: files are read through [`Files`] and the time comes in as an argument, so every rule is
//! a fixture test. [`cli`] is the shell both binaries call. Paths in the config resolve relative
//! to the config file (as `az iot edge devices create` does; the tutorial tool used its working
//! directory). Errors name the file, line and field, and the fix; everything that cannot be
//! carried over is a [`Warning`], never dropped silently. Conversion rules are in [`convert`].

pub mod az_cfg;
pub mod cli;
mod convert;
pub mod iotedge_config;
mod lines;
pub mod output;
mod parse;
mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use jiff::Timestamp;

use crate::api::EdgeHierarchy;

pub use output::render;

/// Name of the Secret holding the hub's service connection string that the hierarchy refers to.
pub const CONNECTION_STRING_SECRET: &str = "iothub-service";
/// Key of the connection string in [`CONNECTION_STRING_SECRET`].
pub const CONNECTION_STRING_KEY: &str = "connectionString";

/// Choices of the person importing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Set `spec.policy.adoptExisting`, so devices the tool created are taken over rather than
    /// reported as conflicts.
    pub adopt: bool,
    /// Namespace written into every object (the kubectl plugin's `-n`); none by default, so
    /// `kubectl apply -n` decides.
    pub namespace: Option<String>,
}

/// The two config formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `iotedge_config.yaml` of iotedge_config_cli.
    IotedgeConfig,
    /// The `--cfg` file of `az iot edge devices create`.
    AzDevicesConfig,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::IotedgeConfig => "iotedge_config_cli config, config_version 1.0",
            Format::AzDevicesConfig => "az iot edge devices create config, configVersion 1.0",
        })
    }
}

/// Where in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl Place {
    pub(crate) fn file(file: &str) -> Self {
        Place {
            file: file.to_string(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Why a config cannot be converted: where, which field, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub place: Place,
    /// Field path in the config (`edgedevices.child[0].device_id`); empty for the whole file.
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: ", self.place)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// Every error found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportErrors(pub Vec<ImportError>);

impl fmt::Display for ImportErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ImportErrors {}

impl From<ImportError> for ImportErrors {
    fn from(e: ImportError) -> Self {
        ImportErrors(vec![e])
    }
}

/// Something of the config that is not carried over as it was, or needs a person's eye.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub place: Place,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: ", self.place)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A ConfigMap holding one deployment manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentConfigMap {
    /// ConfigMap name: `<hierarchy>-<deployment>`.
    pub name: String,
    /// Name of the deployment in `spec.deployments`.
    pub deployment: String,
    /// Data key: the file's own name when Kubernetes allows it (as `kubectl create configmap
    /// --from-file` would name it).
    pub key: String,
    /// The manifest JSON: the file's text, or its normalised form (see [`convert`]).
    pub text: String,
    /// The file as the config names it, resolved against the config's folder.
    pub source: String,
    /// Ids of the devices that run it.
    pub devices: Vec<String>,
}

/// The root CA files a config names; the Secret is created from them with kubectl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCaFiles {
    /// The `kubernetes.io/tls` Secret `spec.certificates.rootCA.secretRef` names.
    pub secret_name: String,
    /// Certificate and key file, resolved against the config's folder.
    pub cert: String,
    pub key: String,
}

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Import {
    pub format: Format,
    /// The config file as given.
    pub source: String,
    pub hierarchy: EdgeHierarchy,
    pub config_maps: Vec<DeploymentConfigMap>,
    pub root_ca: Option<RootCaFiles>,
    /// The hub's name, when the config has it (for the connection string command).
    pub hub_name: Option<String>,
    /// Remarks that go into the output as comments, for whoever reviews it.
    pub notes: Vec<String>,
    /// The registry login `spec.edge.agentAuth` reads, when the config had `container_auth`.
    pub agent_login: Option<AgentLogin>,
    pub warnings: Vec<Warning>,
}

/// The Secret `spec.edge.agentAuth` names and what goes into it; the password stays in the
/// config, named by its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLogin {
    pub secret: String,
    pub username: String,
    /// Where the config holds the password (`edgedevices.container_auth`).
    pub password_field: String,
}

/// Read access to the config and the files it names.
pub trait Files {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
}

/// In-memory files by path, for tests and callers that have the files already.
impl Files for BTreeMap<PathBuf, String> {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        self.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            )
        })
    }
}

/// `path` as named from inside `config`'s folder: absolute paths stay, relative ones are
/// joined to the folder; `.` and `..` are folded without touching the file system.
pub(crate) fn resolve(config: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new("")).join(path)
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Converts the config at `config_path`, reading it and the files it names through `files`.
/// `now` decides whether a given root CA is valid.
pub fn import(
    config_path: &Path,
    files: &dyn Files,
    options: &ImportOptions,
    now: Timestamp,
) -> Result<Import, ImportErrors> {
    let file = config_path.display().to_string();
    let text = files.read_to_string(config_path).map_err(|e| ImportError {
        place: Place::file(&file),
        field: String::new(),
        problem: format!("cannot read the config file: {e}"),
        fix:
            "pass the path of iotedge_config.yaml or of the `az iot edge devices create --cfg` file"
                .into(),
    })?;
    let source = parse::Source::new(file, &text);
    let parsed = match source.detect()? {
        Format::IotedgeConfig => iotedge_config::parse(&source)?,
        Format::AzDevicesConfig => az_cfg::parse(&source)?,
    };
    convert::convert(
        parsed,
        &convert::Context {
            config_path,
            source: &source,
            files,
            options,
            now,
        },
    )
}

#[cfg(test)]
#[path = "tests/mod.rs"]
mod tests;
