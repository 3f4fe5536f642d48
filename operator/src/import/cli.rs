//! The shell around the pure conversion that `edge-hierarchy-operator import` and
//! `kubectl edgehierarchy import` share: read from disk, YAML to stdout, warnings and errors to
//! stderr.

use std::io::Write;
use std::path::Path;

use super::{Files, ImportOptions, import, render};

/// The local file system.
pub struct Disk;

impl Files for Disk {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Converts `file`: the YAML goes to stdout, every warning and a summary to stderr. On errors
/// nothing is written to stdout, each error is printed, and the result is an error.
pub fn run(file: &Path, options: &ImportOptions) -> anyhow::Result<()> {
    match import(file, &Disk, options, jiff::Timestamp::now()) {
        Ok(result) => {
            let mut stderr = std::io::stderr().lock();
            for w in &result.warnings {
                writeln!(stderr, "{w}")?;
            }
            let yaml = render(&result);
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            writeln!(
                stderr,
                "converted {} device{} and {} deployment{} from {} ({}) into EdgeHierarchy {}{}",
                result.hierarchy.spec.devices.len(),
                plural(result.hierarchy.spec.devices.len()),
                result.config_maps.len(),
                plural(result.config_maps.len()),
                result.source,
                result.format,
                result.hierarchy.metadata.name.as_deref().unwrap_or(""),
                match result.warnings.len() {
                    0 => String::new(),
                    n => format!("; {n} warning{} above", plural(n)),
                }
            )?;
            Ok(())
        }
        Err(errors) => {
            let mut stderr = std::io::stderr().lock();
            for e in &errors.0 {
                writeln!(stderr, "{e}")?;
            }
            anyhow::bail!(
                "{} error{} in {}; nothing was written",
                errors.0.len(),
                plural(errors.0.len()),
                file.display()
            )
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
