//! `kubectl edgehierarchy status HIERARCHY DEVICE`: one device's certificate, modules, drift and
//! last events, from the hierarchy as read and the Events that name the device.

use std::fmt::Write;

use jiff::Timestamp;

use crate::api::duration::parse_duration;
use crate::api::{DeviceStatus, EdgeHierarchy};
use crate::names::{bundle_secret_name, certificate_secret_name};
use crate::pki::renewal_time;

/// One Event about the hierarchy, reduced to what the report prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    pub time: Timestamp,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub note: String,
}

/// How many Events the report shows, newest last.
pub const EVENTS_SHOWN: usize = 10;

/// The report, or an error naming the device and how to find the right id.
pub fn render(
    hierarchy: &EdgeHierarchy,
    device: &str,
    events: &[EventLine],
    now: Timestamp,
) -> Result<String, String> {
    let name = hierarchy.metadata.name.as_deref().unwrap_or("?");
    let namespace = hierarchy.metadata.namespace.as_deref().unwrap_or("?");
    let Some(spec) = hierarchy.spec.devices.iter().find(|d| d.id == device) else {
        return Err(format!(
            "edgehierarchy {name:?} in namespace {namespace:?} has no device {device:?}; \
             list its devices with `kubectl edgehierarchy tree {name} -n {namespace}`"
        ));
    };
    let status: Option<&DeviceStatus> = hierarchy
        .status
        .as_ref()
        .and_then(|s| s.devices.iter().find(|d| d.id == device));
    let configurations: Vec<&str> = hierarchy
        .status
        .iter()
        .flat_map(|s| s.configurations.iter())
        .filter(|c| spec.deployment.as_deref() == Some(c.deployment.as_str()))
        .map(|c| c.id.as_str())
        .collect();
    let details_omitted = hierarchy
        .status
        .as_ref()
        .and_then(|s| s.details_omitted)
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Device {device} ({:?}) of {namespace}/{name}",
        spec.device_type
    );
    let Some(s) = status else {
        let _ = writeln!(
            out,
            "  State:        not reported yet (the operator has not synced this device)"
        );
        write_events(&mut out, device, events);
        return Ok(out);
    };
    let _ = writeln!(out, "  State:        {:?}", s.state);
    let parent = spec.parent.as_deref();
    let _ = writeln!(
        out,
        "  Layer:        {}{}",
        s.layer.map_or("-".to_string(), |l| l.to_string()),
        parent.map_or(String::new(), |p| format!(" (parent {p})"))
    );
    if let Some(scope) = &s.device_scope {
        let _ = writeln!(out, "  Scope:        {scope}");
    }
    match &s.certificate {
        Some(c) => {
            let expiry = c.not_after.as_ref().map_or("-".to_string(), |t| {
                format!("{} ({})", t.0, relative(now, t.0))
            });
            // The operator re-issues it renewBefore ahead of expiry.
            let renew_before = parse_duration(&hierarchy.spec.certificates.renew_before).ok();
            let renewal =
                c.not_after
                    .as_ref()
                    .zip(renew_before)
                    .map_or("-".to_string(), |(t, before)| {
                        let at = renewal_time(t.0, before);
                        format!("{at} ({})", relative(now, at))
                    });
            let _ = writeln!(
                out,
                "  Certificate:  Secret {}, revision {}\n                expires {expiry}\n                renews  {renewal}",
                certificate_secret_name(name, device),
                c.revision
            );
        }
        None => {
            let _ = writeln!(out, "  Certificate:  none");
        }
    }
    if let Some(b) = &s.bundle {
        let _ = writeln!(
            out,
            "  Bundle:       Secret {}, revision {}",
            bundle_secret_name(name, device),
            b.revision
        );
    }
    if let Some(d) = &s.deployment {
        let _ = writeln!(
            out,
            "  Deployment:   {}{}, {}",
            d.name,
            if configurations.is_empty() {
                String::new()
            } else {
                format!(" (configuration {})", configurations.join(" or "))
            },
            if d.applied { "applied" } else { "not applied" }
        );
    }
    match &s.modules {
        Some(m) => {
            let _ = writeln!(
                out,
                "  Modules:      {} of {} running",
                m.running, m.desired
            );
            for failing in &m.failing {
                let _ = writeln!(out, "                ! {failing}");
            }
            for pending in &m.pending {
                let _ = writeln!(out, "                … {pending}");
            }
        }
        None => {
            let _ = writeln!(out, "  Modules:      not reported");
        }
    }
    if s.drift.is_empty() {
        let _ = writeln!(out, "  Drift:        none");
    } else {
        let _ = writeln!(out, "  Drift:");
        for item in &s.drift {
            let _ = writeln!(out, "                ! {item}");
        }
    }
    if let Some(message) = &s.message {
        let _ = writeln!(out, "  Message:      {message}");
    }
    let texts = !s.drift.is_empty()
        || s.message.is_some()
        || s.modules
            .as_ref()
            .is_some_and(|m| !m.failing.is_empty() || !m.pending.is_empty());
    if details_omitted > 0 && !texts && s.state != crate::api::DeviceState::Ready {
        let _ = writeln!(
            out,
            "  Details:      left out of the status to keep it within its size budget \
             ({details_omitted} devices); see the Events below"
        );
    }
    write_events(&mut out, device, events);
    Ok(out)
}

/// Whether an Event's note is about `device`: names it as a word of its own, so that `top`
/// does not match a note about `top-2` or `desktop`. Punctuation around an id (a list's comma,
/// a sentence's period, quotes) does not count as part of it.
pub fn mentions(note: &str, device: &str) -> bool {
    let continues =
        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
    !device.is_empty()
        && note.match_indices(device).any(|(at, _)| {
            !continues(note[..at].chars().next_back())
                && !continues(note[at + device.len()..].chars().next())
        })
}

fn write_events(out: &mut String, device: &str, events: &[EventLine]) {
    let mut about: Vec<&EventLine> = events
        .iter()
        .filter(|e| mentions(&e.note, device))
        .collect();
    about.sort_by_key(|e| e.time);
    let skip = about.len().saturating_sub(EVENTS_SHOWN);
    if about.is_empty() {
        let _ = writeln!(out, "Events:         none naming this device");
        return;
    }
    let _ = writeln!(out, "Events (newest last):");
    for e in &about[skip..] {
        let _ = writeln!(
            out,
            "  {}  {:<7}  {:<20}  {}",
            e.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            e.type_,
            e.reason,
            e.note
        );
    }
}

/// "in 3d 4h" or "2h ago", to the two largest units.
fn relative(now: Timestamp, at: Timestamp) -> String {
    let seconds = at.as_second() - now.as_second();
    let magnitude = seconds.unsigned_abs();
    let (days, hours, minutes) = (
        magnitude / 86_400,
        magnitude % 86_400 / 3_600,
        magnitude % 3_600 / 60,
    );
    let span = if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m")
    };
    if seconds >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests;
