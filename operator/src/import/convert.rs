//! From a read config to the hierarchy, its deployment ConfigMaps and the Secrets it names.
//!
//! Rules, each with a fixture test in `tests/`:
//! - The tree is flattened parents first; ids are kept as they are; every device is an Edge
//!   device (both tools make only those) and names its parent.
//! - Authentication `symmetric_key`/`symmetricKey` is SymmetricKey, `x509_certificate`/
//!   `x509Certificate` is X509.
//! - One deployment per deployment JSON file (several devices may share one), named after the
//!   file: words of its name, lower case, joined with `-`, a leading or trailing "deployment"
//!   dropped (`deploymentTopLayer.json` → `top-layer`), made unique with `-2`, `-3`. Its ConfigMap
//!   `<hierarchy>-<deployment>` holds the file under its own name. A file wrapped as
//!   `{"content": {...}}` or using the legacy `moduleContent` (both accepted by `az`) is unwrapped;
//!   otherwise the text is kept, trailing blanks and tabs aside (JSON ignores them, YAML block
//!   text cannot hold them).
//! - One agent image per hierarchy: `default_edge_agent` with `$upstream:<port>/` put back to
//!   the registry the top layer's registry module mirrors (the operator rewrites it for lower
//!   layers itself); devices whose own `edge_agent` differs are reported.
//! - The hierarchy is named after the hub (`iothub.iothub_name`) when the config has it,
//!   otherwise after the file.
//! - Root CA files are checked as the operator would check the Secret; the Secret itself is left
//!   to a `kubectl create secret tls` command in the output (the key stays out of stdout and Git).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::Value;

use super::parse::{ContainerLogin, Device, Keys, Parsed, Source, suggestion};
use super::{
    AgentLogin, CONNECTION_STRING_KEY, CONNECTION_STRING_SECRET, DeploymentConfigMap, Files,
    Format, Import, ImportError, ImportErrors, ImportOptions, Place, RootCaFiles, Warning, resolve,
    template,
};
use crate::api::{
    AgentAuthSpec, AuthenticationType, CertificatesSpec, ConfigMapKeyRef, DeploymentMode,
    DeploymentSpec, DeviceSpec, DeviceType, EdgeHierarchy, EdgeHierarchySpec, EdgeRuntimeSpec,
    IotHubSpec, LocalObjectRef, PolicySpec, RegistrySecretRef, RootCaSpec, SecretKeyRef, validate,
};
use crate::deploy::image::UPSTREAM;
use crate::deploy::resolve_manifests;
use crate::names::slug;

/// Longest hierarchy name the import derives, so names made from it stay readable.
const MAX_HIERARCHY_NAME: usize = 40;
/// Longest deployment name (`spec.deployments[].name`), with room for a `-NN` suffix.
const MAX_DEPLOYMENT_NAME: usize = 60;
/// Most deployments a hierarchy holds (the CRD's maxItems).
const MAX_DEPLOYMENTS: usize = 100;
/// Longest hostname the CRD accepts.
const MAX_HOSTNAME: usize = 253;
/// The registry the tutorial's top layer mirrors, and the operator's default upstream registry.
const MCR: &str = "mcr.microsoft.com";
/// Environment variable of the registry module naming the registry it mirrors.
const REGISTRY_REMOTE_ENV: &str = "REGISTRY_PROXY_REMOTEURL";

pub(crate) struct Context<'a> {
    pub config_path: &'a Path,
    pub source: &'a Source<'a>,
    pub files: &'a dyn Files,
    pub options: &'a ImportOptions,
    pub now: Timestamp,
}

/// A device of the flattened tree.
struct Flat<'a> {
    device: &'a Device,
    parent: Option<&'a str>,
    layer: u32,
    /// Place of its id.
    place: Place,
}

/// A deployment file and the devices that name it.
struct DeploymentFile {
    resolved: PathBuf,
    written: String,
    /// Indexes into the flat device list.
    users: Vec<usize>,
    name: String,
    content: Option<Value>,
    text: String,
}

struct Out {
    errors: Vec<ImportError>,
    warnings: Vec<Warning>,
    notes: Vec<String>,
    agent_login: Option<AgentLogin>,
}

impl Out {
    fn warn(&mut self, place: Place, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            place,
            field: field.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn convert(parsed: Parsed, cx: &Context) -> Result<Import, ImportErrors> {
    let keys = parsed.keys;
    let source = cx.source;
    let mut out = Out {
        errors: Vec::new(),
        warnings: Vec::new(),
        notes: Vec::new(),
        agent_login: None,
    };

    unknown_keys(&parsed, source, &mut out);

    let flat = flatten(&parsed.roots, keys, source);
    if flat.is_empty() {
        let field = match parsed.format {
            Format::IotedgeConfig => "edgedevices",
            Format::AzDevicesConfig => "edgeDevices",
        };
        out.errors.push(source.error(
            field,
            None,
            "the config lists no device",
            format!("list the hierarchy's devices under {field}"),
        ));
        return Err(ImportErrors(out.errors));
    }
    let kept = unique_devices(&flat, keys, &mut out);
    device_fields(&flat, &kept, keys, source, &mut out);

    let name = hierarchy_name(parsed.hub_name.as_deref(), cx.config_path);
    let mut files = deployment_files(&flat, &kept, keys, cx, &mut out);

    let mut edge = edge_runtime(&parsed, &flat, &files, keys, source, &mut out);
    edge.agent_auth = agent_auth(&flat, &kept, keys, source, &name, &mut out);
    upstream_on_top_layer(&flat, &files, &mut out);

    let root_ca = parsed
        .root_ca
        .as_ref()
        .and_then(|(cert, key)| root_ca(cert, key, keys, cx, &name, &mut out));
    if let Some(path) = &parsed.template {
        template_customisations(path, keys, cx, &mut out);
    }
    if parsed.authentication == AuthenticationType::X509 {
        out.notes.push(
            "X509: the operator issues each device's identity certificate itself and registers its SHA-256 \
             thumbprint; the certificates the tool generated are not reused."
                .into(),
        );
    }

    let devices = device_specs(&flat, &kept, &files);
    files.retain(|f| f.content.is_some());
    let config_maps = config_maps(&files, &flat, &name, source, &mut out);
    let deployments = deployment_specs(&config_maps);
    let spec = hierarchy_spec(&parsed, cx, root_ca.as_ref(), edge, deployments, devices);

    whole_tree(&spec, &flat, keys, &mut out);
    manifests(&spec, &config_maps, &mut out);

    if !out.errors.is_empty() {
        return Err(ImportErrors(out.errors));
    }
    let mut hierarchy = EdgeHierarchy::new(&name, spec);
    hierarchy.metadata.namespace = cx.options.namespace.clone();
    if parsed.hub_name.is_some() {
        out.notes.insert(
            0,
            format!(
                "Named {name:?} after the hub ({}); to rename it, change metadata.name and the ConfigMap names.",
                keys.hub_name
            ),
        );
    }
    Ok(Import {
        format: parsed.format,
        source: source.file.clone(),
        hierarchy,
        config_maps,
        root_ca,
        hub_name: parsed.hub_name,
        notes: out.notes,
        agent_login: out.agent_login,
        warnings: out.warnings,
    })
}

/// The spec's devices, in the config's order, each with its deployment file's name.
fn device_specs(flat: &[Flat<'_>], kept: &[usize], files: &[DeploymentFile]) -> Vec<DeviceSpec> {
    let file_of_device: BTreeMap<usize, usize> = files
        .iter()
        .enumerate()
        .flat_map(|(f, file)| file.users.iter().map(move |d| (*d, f)))
        .collect();
    kept.iter()
        .map(|&i| {
            let f = &flat[i];
            DeviceSpec {
                id: f.device.id.clone(),
                parent: f.parent.map(str::to_string),
                device_type: DeviceType::Edge,
                deployment: file_of_device
                    .get(&i)
                    .filter(|&&n| files[n].content.is_some())
                    .map(|&n| files[n].name.clone()),
                layered_deployments: Vec::new(),
                hostname: f.device.hostname.clone(),
            }
        })
        .collect()
}

/// One ConfigMap per deployment file that devices use; too many for one hierarchy is an error.
fn config_maps(
    files: &[DeploymentFile],
    flat: &[Flat<'_>],
    name: &str,
    source: &Source,
    out: &mut Out,
) -> Vec<DeploymentConfigMap> {
    let config_maps: Vec<DeploymentConfigMap> = files
        .iter()
        .map(|f| DeploymentConfigMap {
            name: format!("{name}-{}", f.name),
            deployment: f.name.clone(),
            key: config_map_key(&f.resolved),
            text: f.text.clone(),
            source: f.resolved.display().to_string(),
            devices: f.users.iter().map(|&i| flat[i].device.id.clone()).collect(),
        })
        .collect();
    if config_maps.len() > MAX_DEPLOYMENTS {
        out.errors.push(ImportError {
            place: Place::file(&source.file),
            field: String::new(),
            problem: format!(
                "the devices use {} deployment files; one hierarchy holds at most {MAX_DEPLOYMENTS} deployments",
                config_maps.len()
            ),
            fix: "let devices of the same role share a deployment file, or split the tree into several configs".into(),
        });
    }
    config_maps
}

/// A deployment per ConfigMap.
fn deployment_specs(config_maps: &[DeploymentConfigMap]) -> Vec<DeploymentSpec> {
    config_maps
        .iter()
        .map(|cm| DeploymentSpec {
            name: cm.deployment.clone(),
            priority: 10,
            layered: false,
            content: None,
            config_map_ref: Some(ConfigMapKeyRef {
                name: cm.name.clone(),
                key: cm.key.clone(),
            }),
            registry_credentials: Vec::new(),
        })
        .collect()
}

/// The hierarchy's spec from what the conversion found.
fn hierarchy_spec(
    parsed: &Parsed,
    cx: &Context,
    root_ca: Option<&RootCaFiles>,
    edge: EdgeRuntimeSpec,
    deployments: Vec<DeploymentSpec>,
    devices: Vec<DeviceSpec>,
) -> EdgeHierarchySpec {
    EdgeHierarchySpec {
        iot_hub: IotHubSpec {
            connection_string_secret_ref: SecretKeyRef {
                name: CONNECTION_STRING_SECRET.into(),
                key: CONNECTION_STRING_KEY.into(),
            },
            ca_secret_ref: None,
            rate_limits: None,
        },
        policy: PolicySpec {
            adopt_existing: cx.options.adopt,
            ..PolicySpec::default()
        },
        authentication: parsed.authentication,
        certificates: CertificatesSpec {
            root_ca: root_ca.map(|r| RootCaSpec {
                secret_ref: LocalObjectRef {
                    name: r.secret_name.clone(),
                },
            }),
            ..CertificatesSpec::default()
        },
        edge,
        deployment_mode: DeploymentMode::Automatic,
        deployments,
        devices,
    }
}

/// Unknown keys, each with its line and, for a likely misspelling, the key meant.
fn unknown_keys(parsed: &Parsed, source: &Source, out: &mut Out) {
    let keys = parsed.keys;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for path in &parsed.unknown {
        let key = path.rsplit('.').next().unwrap_or(path);
        let key = key.split('[').next().unwrap_or(key);
        let n = seen.entry(key).or_default();
        let place = source.place(path, None, *n);
        *n += 1;
        let children_typo = match parsed.format {
            Format::IotedgeConfig => key == "children",
            Format::AzDevicesConfig => key == "child",
        };
        let message = if children_typo {
            format!(
                "unknown key, ignored: did you mean `{}`? The {} reads only `{}`, so it never created the devices \
                 listed here, and they are not imported; rename the key to import them",
                keys.children,
                match parsed.format {
                    Format::IotedgeConfig => "tool",
                    Format::AzDevicesConfig => "az command",
                },
                keys.children
            )
        } else {
            match suggestion(key, keys.known) {
                Some(known) => format!("unknown key, ignored: did you mean `{known}`?"),
                None => "unknown key, ignored (the format has no such setting)".into(),
            }
        };
        out.warn(place, path.clone(), message);
    }
}

/// Devices parents first (depth first, in the config's order), with their layer and place.
fn flatten<'a>(roots: &'a [Device], keys: &Keys, source: &Source) -> Vec<Flat<'a>> {
    fn walk<'a>(
        d: &'a Device,
        parent: Option<&'a str>,
        layer: u32,
        keys: &Keys,
        source: &Source,
        seen: &mut BTreeMap<&'a str, usize>,
        out: &mut Vec<Flat<'a>>,
    ) {
        let n = seen.entry(d.id.as_str()).or_default();
        let place = source.place(&format!("{}.{}", d.path, keys.device_id), Some(&d.id), *n);
        *n += 1;
        out.push(Flat {
            device: d,
            parent,
            layer,
            place,
        });
        for c in &d.children {
            walk(c, Some(&d.id), layer + 1, keys, source, seen, out);
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for r in roots {
        walk(r, None, 1, keys, source, &mut seen, &mut out);
    }
    out
}

fn line_note(place: &Place) -> String {
    match place.line {
        Some(line) => format!(", line {line}"),
        None => String::new(),
    }
}

/// Indexes of the devices kept: the first of each id. Every later one is an error.
fn unique_devices(flat: &[Flat], keys: &Keys, out: &mut Out) -> Vec<usize> {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kept = Vec::new();
    for (i, f) in flat.iter().enumerate() {
        match first.get(f.device.id.as_str()) {
            None => {
                first.insert(&f.device.id, i);
                kept.push(i);
            }
            Some(&j) => out.errors.push(ImportError {
                place: f.place.clone(),
                field: format!("{}.{}", f.device.path, keys.device_id),
                problem: format!(
                    "device id {:?} is used twice (first at {}.{}{})",
                    f.device.id,
                    flat[j].device.path,
                    keys.device_id,
                    line_note(&flat[j].place)
                ),
                fix: "give each device a unique id; IoT Hub holds one device per id".into(),
            }),
        }
    }
    kept
}

/// Hostnames, and registry credentials that cannot be carried over.
/// The tool's per-device `container_auth` as `spec.edge.agentAuth`, which serves every device of
/// the hierarchy: possible when all devices that have one name the same registry and user. The
/// password never goes into the output; a note gives the command that puts it into the Secret.
fn agent_auth(
    flat: &[Flat],
    kept: &[usize],
    keys: &Keys,
    source: &Source,
    hierarchy: &str,
    out: &mut Out,
) -> Option<AgentAuthSpec> {
    let with_auth: Vec<(&Device, &ContainerLogin)> = kept
        .iter()
        .filter_map(|&i| Some((flat[i].device, flat[i].device.container_auth.as_ref()?)))
        .collect();
    let (first_device, first) = *with_auth.first()?;
    let field = |d: &Device| format!("{}.{}", d.path, keys.container_auth);
    for (d, login) in &with_auth {
        if login.server_address.is_none() || login.username.is_none() || !login.has_password {
            out.warn(
                source.place(&field(d), None, 0),
                field(d),
                format!(
                    "device {:?}'s registry credentials lack a server address, user name or password, so they are not \
                     carried over; give all three, or drop them if the agent image needs no login",
                    d.id
                ),
            );
            return None;
        }
        if login.server_address != first.server_address || login.username != first.username {
            out.warn(
                source.place(&field(d), None, 0),
                field(d),
                format!(
                    "devices {:?} and {:?} log in to different registries or as different users for the edgeAgent pull, \
                     but a hierarchy has one spec.edge.agentAuth for all its devices; none is carried over: split the tree \
                     into one config per registry, or set spec.edge.agentAuth by hand",
                    first_device.id, d.id
                ),
            );
            return None;
        }
    }
    let server_address = first.server_address.clone()?;
    let username = first.username.clone()?;
    let secret = format!("{hierarchy}-agent-registry");
    if with_auth.len() < kept.len() {
        out.warn(
            source.place(&field(first_device), None, 0),
            field(first_device),
            format!(
                "only {} of {} devices have registry credentials; spec.edge.agentAuth gives the login to {server_address} \
                 to every device of the hierarchy",
                with_auth.len(),
                kept.len()
            ),
        );
    }
    out.agent_login = Some(AgentLogin {
        secret: secret.clone(),
        username,
        password_field: field(first_device),
    });
    Some(AgentAuthSpec {
        server_address,
        secret_ref: RegistrySecretRef {
            name: secret,
            username_key: "username".into(),
            password_key: "password".into(),
        },
    })
}

fn device_fields(flat: &[Flat], kept: &[usize], keys: &Keys, source: &Source, out: &mut Out) {
    let mut by_hostname: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &i in kept {
        let d = flat[i].device;
        if let Some(h) = &d.hostname {
            let field = format!("{}.{}", d.path, keys.hostname);
            if h.len() > MAX_HOSTNAME {
                out.errors.push(ImportError {
                    place: source.place(&field, Some(h), 0),
                    field: field.clone(),
                    problem: format!("the hostname has {} characters", h.len()),
                    fix: format!("use a host name or IP address of at most {MAX_HOSTNAME} characters (IoT Edge wants under 64)"),
                });
            }
            by_hostname.entry(h).or_default().push(&d.id);
        }
    }
    for (hostname, ids) in by_hostname {
        if ids.len() > 1 {
            out.warn(
                Place::file(&source.file),
                String::new(),
                format!(
                    "devices {} share the hostname {hostname:?}; children reach their parent by it, so each device needs its own",
                    ids.iter()
                        .map(|id| format!("{id:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
}

/// A DNS-1123 name for the hierarchy.
pub(crate) fn hierarchy_name(hub_name: Option<&str>, config_path: &Path) -> String {
    let from = hub_name.map(str::to_string).unwrap_or_else(|| {
        config_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let name = slug(&from, MAX_HIERARCHY_NAME);
    if name.is_empty() {
        "hierarchy".into()
    } else {
        name
    }
}

/// The words of a file name: split at anything not a letter or digit and at camel-case humps.
fn words(stem: &str) -> Vec<String> {
    let chars: Vec<char> = stem.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let hump = c.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()))
            });
        if hump && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A deployment name from a manifest file's name: `deploymentTopLayer.json` → `top-layer`.
pub(crate) fn deployment_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut words = words(&stem);
    let filler = |w: &String| matches!(w.as_str(), "deployment" | "deploy" | "manifest");
    while words.len() > 1 && filler(&words[0]) {
        words.remove(0);
    }
    while words.len() > 1 && words.last().is_some_and(filler) {
        words.pop();
    }
    let name = slug(&words.join("-"), MAX_DEPLOYMENT_NAME);
    if name.is_empty() {
        "deployment".into()
    } else {
        name
    }
}

/// The ConfigMap key for a manifest file: its own name when Kubernetes allows it.
fn config_map_key(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let allowed = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if allowed {
        name
    } else {
        "deployment.json".into()
    }
}

/// Reads every deployment file once, names it, and normalises its content.
fn deployment_files(
    flat: &[Flat],
    kept: &[usize],
    keys: &Keys,
    cx: &Context,
    out: &mut Out,
) -> Vec<DeploymentFile> {
    let mut files: Vec<DeploymentFile> = Vec::new();
    for &i in kept {
        let Some(written) = &flat[i].device.deployment else {
            continue;
        };
        let resolved = resolve(cx.config_path, written);
        match files.iter_mut().find(|f| f.resolved == resolved) {
            Some(f) => f.users.push(i),
            None => files.push(DeploymentFile {
                resolved,
                written: written.clone(),
                users: vec![i],
                name: String::new(),
                content: None,
                text: String::new(),
            }),
        }
    }
    let mut taken = BTreeSet::new();
    for f in &mut files {
        let base = deployment_name(&f.resolved);
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        f.name = name;
        load_manifest(f, flat, keys, cx, out);
    }
    files
}

/// Reads and parses one deployment file into `f.text` and `f.content`; a file that cannot be read
/// or is not JSON is an error naming the device field that points to it.
fn load_manifest(f: &mut DeploymentFile, flat: &[Flat], keys: &Keys, cx: &Context, out: &mut Out) {
    let source = cx.source;
    let user = &flat[f.users[0]];
    let field = format!("{}.{}", user.device.path, keys.deployment);
    let place = source.place(&field, Some(&f.written), 0);
    let others = f
        .users
        .iter()
        .skip(1)
        .map(|&u| format!("{}.{}", flat[u].device.path, keys.deployment))
        .collect::<Vec<_>>();
    let also = if others.is_empty() {
        String::new()
    } else {
        format!(" (also named by {})", others.join(", "))
    };
    let text = match cx.files.read_to_string(&f.resolved) {
        Ok(text) => text,
        Err(e) => {
            let folder = resolve(cx.config_path, ".");
            out.errors.push(ImportError {
                place,
                field,
                problem: format!(
                    "deployment file {:?} cannot be read as {}: {e}{also}",
                    f.written,
                    f.resolved.display()
                ),
                fix: format!(
                    "paths are read relative to the folder of the config file ({}), not the folder the tool ran \
                     in; correct the path or put the file there",
                    folder.display()
                ),
            });
            return;
        }
    };
    let file_label = f.resolved.display().to_string();
    let mut value: Value = match serde_json::from_str(text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => {
            let problem = e.to_string();
            let problem = match problem.rfind(" at line ") {
                Some(at) => problem[..at].to_string(),
                None => problem,
            };
            out.errors.push(ImportError {
                place: Place {
                    file: file_label,
                    line: Some(e.line()),
                    column: Some(e.column()),
                },
                field: String::new(),
                problem: format!(
                    "the deployment manifest is not valid JSON ({problem}); it is named by {field}{}",
                    line_note(&place)
                ),
                fix: "write the manifest as JSON, {\"modulesContent\": {...}}, as `az iot edge set-modules` reads it"
                    .into(),
            });
            return;
        }
    };
    let mut changed = false;
    if let Some(inner) = value.get("content").filter(|c| c.is_object()).cloned() {
        value = inner;
        changed = true;
        out.warn(
            Place::file(&file_label),
            "content",
            "the manifest is wrapped in {\"content\": ...}; the ConfigMap holds what is inside",
        );
    }
    if let Some(map) = value.as_object_mut()
        && !map.contains_key("modulesContent")
        && let Some(legacy) = map.remove("moduleContent")
    {
        map.insert("modulesContent".into(), legacy);
        changed = true;
        out.warn(
            Place::file(&file_label),
            "moduleContent",
            "the legacy key moduleContent is written as modulesContent",
        );
    }
    f.text = if changed {
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    } else {
        block_friendly(&text, &value)
    };
    f.content = Some(value);
}

/// The manifest text without trailing blanks and tabs, which JSON ignores outside strings (and
/// cannot have inside them) but which would force YAML to quote the whole text; pretty JSON if
/// that somehow changed the meaning.
fn block_friendly(text: &str, value: &Value) -> String {
    let mut cleaned: String = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(|l| l.trim_end().replace('\t', "    "))
        .collect::<Vec<_>>()
        .join("\n");
    cleaned = cleaned.trim_end().to_string();
    cleaned.push('\n');
    match serde_json::from_str::<Value>(&cleaned) {
        Ok(v) if v == *value => cleaned,
        _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

/// Module images of a manifest: `(module, image)` for system modules and modules.
fn images(content: &Value) -> Vec<(String, String)> {
    let desired = &content["modulesContent"]["$edgeAgent"]["properties.desired"];
    let mut out = Vec::new();
    for section in ["systemModules", "modules"] {
        if let Some(modules) = desired[section].as_object() {
            for (name, m) in modules {
                if let Some(image) = m["settings"]["image"].as_str() {
                    out.push((name.clone(), image.to_string()));
                }
            }
        }
    }
    out
}

/// Hosts the manifests' registry modules mirror (`REGISTRY_PROXY_REMOTEURL`).
fn mirrored_registries(files: &[DeploymentFile]) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for f in files {
        let Some(content) = &f.content else { continue };
        let desired = &content["modulesContent"]["$edgeAgent"]["properties.desired"];
        if let Some(modules) = desired["modules"].as_object() {
            for m in modules.values() {
                if let Some(url) = m["env"][REGISTRY_REMOTE_ENV]["value"].as_str() {
                    let host = url
                        .trim()
                        .trim_start_matches("https://")
                        .trim_start_matches("http://");
                    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
                    if !host.is_empty() {
                        hosts.insert(host);
                    }
                }
            }
        }
    }
    hosts
}

/// `$upstream:<port>/<path>` back to `<registry>/<path>`, with the port.
fn strip_upstream(image: &str, registry: &str) -> (String, Option<u16>) {
    let Some(rest) = image.strip_prefix(UPSTREAM) else {
        return (image.to_string(), None);
    };
    let (port, path) = match rest.strip_prefix(':') {
        Some(after) => match after.split_once('/') {
            Some((port, path)) => (port.parse().ok(), path),
            None => return (image.to_string(), None),
        },
        None => match rest.strip_prefix('/') {
            Some(path) => (None, path),
            None => return (image.to_string(), None),
        },
    };
    (format!("{registry}/{path}"), port)
}

/// The hierarchy's `edge` settings: one agent image, the upstream port and registries.
fn edge_runtime(
    parsed: &Parsed,
    flat: &[Flat],
    files: &[DeploymentFile],
    keys: &Keys,
    source: &Source,
    out: &mut Out,
) -> EdgeRuntimeSpec {
    let mut edge = EdgeRuntimeSpec::default();
    let mirrored = mirrored_registries(files);
    if !mirrored.is_empty() && mirrored != BTreeSet::from([MCR.to_string()]) {
        edge.upstream_registries = mirrored.iter().cloned().collect();
    }
    let registry = edge
        .upstream_registries
        .first()
        .cloned()
        .unwrap_or_else(|| MCR.into());
    let mut ports = BTreeSet::new();
    let mut strip = |image: &str| {
        let (image, port) = strip_upstream(image, &registry);
        ports.extend(port);
        image
    };
    let default = parsed.default_agent.as_deref().map(&mut strip);
    let per_device: Vec<(usize, String)> = flat
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.device.edge_agent.as_deref().map(|a| (i, strip(a))))
        .collect();
    let chosen = default.clone().or_else(|| {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, image) in &per_device {
            *counts.entry(image).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(image, _)| image.to_string())
    });
    match &chosen {
        Some(image) => edge.agent_image = image.clone(),
        None => out.notes.push(format!(
            "The config names no edge agent image; the operator's default {} is used.",
            edge.agent_image
        )),
    }
    if default.is_none() && chosen.is_some() {
        out.warn(
            source.place(keys.default_agent, None, 0),
            keys.default_agent,
            format!(
                "not set; spec.edge.agentImage is {}, the image most devices name",
                edge.agent_image
            ),
        );
    }
    for (i, image) in &per_device {
        if *image != edge.agent_image {
            let d = flat[*i].device;
            let field = format!("{}.{}", d.path, keys.edge_agent);
            let message = format!(
                "device {:?} names agent image {image}, but a hierarchy runs one agent image on every device \
                 (spec.edge.agentImage: {}); to keep both, split the tree into two configs",
                d.id, edge.agent_image
            );
            out.notes.push(message.clone());
            out.warn(
                source.place(&field, d.edge_agent.as_deref(), 0),
                field,
                message,
            );
        }
    }
    match ports.len() {
        0 => {}
        1 => edge.upstream_port = ports.into_iter().next().unwrap_or(edge.upstream_port),
        _ => out.warn(
            Place::file(&source.file),
            String::new(),
            format!(
                "agent images name several $upstream ports ({}); spec.edge.upstreamPort stays {}",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                edge.upstream_port
            ),
        ),
    }
    edge
}

/// A top-layer device has no parent to pull `$upstream` images through.
fn upstream_on_top_layer(flat: &[Flat], files: &[DeploymentFile], out: &mut Out) {
    for f in files {
        let Some(content) = &f.content else { continue };
        let top: Vec<&str> = f
            .users
            .iter()
            .filter(|&&u| flat[u].layer == 1)
            .map(|&u| flat[u].device.id.as_str())
            .collect();
        if top.is_empty() {
            continue;
        }
        for (module, image) in images(content) {
            if image.starts_with(UPSTREAM) {
                out.warn(
                    Place::file(&f.resolved.display().to_string()),
                    format!("modulesContent.$edgeAgent['properties.desired'] module {module}"),
                    format!(
                        "image {image} is pulled through a parent, but top-layer device(s) {} run this deployment \
                         and have none; name the image's own registry (the operator rewrites it to $upstream for \
                         lower layers)",
                        top.join(", ")
                    ),
                );
            }
        }
    }
}

/// Checks the root CA files as the operator will check their Secret.
fn root_ca(
    cert: &str,
    key: &str,
    keys: &Keys,
    cx: &Context,
    hierarchy: &str,
    out: &mut Out,
) -> Option<RootCaFiles> {
    let source = cx.source;
    let mut texts = Vec::new();
    for (field, written) in [(keys.root_cert, cert), (keys.root_key, key)] {
        let resolved = resolve(cx.config_path, written);
        match cx.files.read_to_string(&resolved) {
            Ok(text) => texts.push((resolved, text)),
            Err(e) => out.errors.push(ImportError {
                place: source.place(field, Some(written), 0),
                field: field.into(),
                problem: format!("{written:?} cannot be read as {}: {e}", resolved.display()),
                fix: format!(
                    "paths are read relative to the folder of the config file ({}); correct the path, or remove the \
                     certificates section to let the operator generate a root CA",
                    resolve(cx.config_path, ".").display()
                ),
            }),
        }
    }
    let [(cert_path, cert_text), (key_path, key_text)] = <[_; 2]>::try_from(texts).ok()?;
    if let Err(e) = crate::pki::import_root_ca(&cert_text, &key_text, cx.now) {
        out.errors.push(ImportError {
            place: source.place(keys.certificates, None, 0),
            field: keys.certificates.into(),
            problem: format!(
                "the root CA cannot be used ({} is tls.crt, {} is tls.key): {e}",
                keys.root_cert, keys.root_key
            ),
            fix: "give a CA certificate and its unencrypted private key (`openssl pkey -in KEY -out KEY.plain` \
                  decrypts one), or remove the certificates section to let the operator generate a root CA"
                .into(),
        });
        return None;
    }
    Some(RootCaFiles {
        secret_name: format!("{hierarchy}-imported-root-ca"),
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
    })
}

/// Warns about every template setting that the operator's config.toml does not carry.
fn template_customisations(written: &str, keys: &Keys, cx: &Context, out: &mut Out) {
    let source = cx.source;
    let place = source.place(keys.template, Some(written), 0);
    let resolved = resolve(cx.config_path, written);
    let text = match cx.files.read_to_string(&resolved) {
        Ok(text) => text,
        Err(e) => {
            out.warn(
                place,
                keys.template,
                format!(
                    "{} cannot be read ({e}), so its customisations could not be checked; the operator writes each \
                     device's config.toml itself, without a template: compare yours with a device bundle \
                     (kubectl edgehierarchy bundle) and set what differs on the device",
                    resolved.display()
                ),
            );
            return;
        }
    };
    match template::customisations(&text) {
        Err(e) => out.warn(
            place,
            keys.template,
            format!(
                "{} is not valid TOML ({e}), so its customisations could not be checked",
                resolved.display()
            ),
        ),
        Ok(custom) => {
            for setting in custom {
                out.warn(
                    place.clone(),
                    keys.template,
                    format!(
                        "`{setting}` in {} is not carried over: the operator writes config.toml itself and has no \
                         setting for it; set it in /etc/aziot/config.toml on the device after install.sh, then run \
                         `sudo iotedge config apply`",
                        resolved.display()
                    ),
                );
            }
        }
    }
}

/// The operator's own whole-tree validation, its violations placed in the config.
fn whole_tree(spec: &EdgeHierarchySpec, flat: &[Flat], keys: &Keys, out: &mut Out) {
    let Err(violations) = validate(spec) else {
        return;
    };
    for v in violations.0 {
        let device = v
            .subject
            .strip_prefix("device ")
            .and_then(|s| serde_json::from_str::<String>(s).ok())
            .and_then(|id| flat.iter().find(|f| f.device.id == id));
        match device {
            Some(f) => {
                let field = if v.field.ends_with(".id") {
                    format!("{}.{}", f.device.path, keys.device_id)
                } else if v.field.ends_with(".deployment") {
                    format!("{}.{}", f.device.path, keys.deployment)
                } else {
                    f.device.path.clone()
                };
                out.errors.push(ImportError {
                    place: f.place.clone(),
                    field,
                    problem: format!("device {:?}: {}", f.device.id, v.problem),
                    fix: v.fix,
                });
            }
            None => out.errors.push(ImportError {
                place: Place::file(&flat[0].place.file),
                field: v.field.clone(),
                problem: format!("{}: {}", v.subject, v.problem),
                fix: v.fix,
            }),
        }
    }
}

/// The operator's manifest checks on each ConfigMap's text; problems are warnings, since the
/// file converts as it is and the fix belongs in it.
fn manifests(spec: &EdgeHierarchySpec, config_maps: &[DeploymentConfigMap], out: &mut Out) {
    let texts: BTreeMap<(&str, &str), &str> = config_maps
        .iter()
        .map(|cm| ((cm.name.as_str(), cm.key.as_str()), cm.text.as_str()))
        .collect();
    if let Err(errors) = resolve_manifests(spec, |r| {
        texts.get(&(r.name.as_str(), r.key.as_str())).copied()
    }) {
        for e in errors {
            let file = config_maps
                .iter()
                .find(|cm| cm.deployment == e.deployment)
                .map(|cm| cm.source.clone())
                .unwrap_or_default();
            out.warn(
                Place::file(&file),
                String::new(),
                format!("the operator will not accept this manifest as it is: {e}"),
            );
        }
    }
}
