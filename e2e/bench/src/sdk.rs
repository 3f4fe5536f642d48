//! The comparison run: `sdk_create.py` creates the same hierarchy device by device with
//! Microsoft's Python SDK, the way `az iot edge devices create` does. This module runs it and
//! turns its per-step timings into a whole-hierarchy estimate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use e2e_harness::process::ManagedChild;
use serde::Deserialize;

use crate::quota::fixed_window_floor;

/// Time and throttling of one step (create, set parent, set modules).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// Devices that went through the step.
    pub devices: u64,
    /// Seconds spent in SDK calls.
    pub work_seconds: f64,
    /// Seconds spent waiting out 429s.
    pub wait_seconds: f64,
    /// 429 answers.
    pub throttled: u64,
}

impl StepResult {
    /// Average work per device, in seconds (0 when no device went through the step).
    pub fn per_device(&self) -> f64 {
        if self.devices == 0 {
            0.0
        } else {
            self.work_seconds / self.devices as f64
        }
    }
}

/// The three steps.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    /// PUT /devices/{id}.
    pub create: StepResult,
    /// GET the parent, PUT the child with If-Match.
    pub set_parent: StepResult,
    /// applyConfigurationContent, then GET the device's modules.
    pub set_modules: StepResult,
}

/// What `sdk_create.py` writes to its `--out` file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SdkResult {
    /// SDK name and version.
    pub sdk: String,
    /// Devices in the plan.
    pub devices: u64,
    /// Edge devices in the plan.
    pub edge_devices: u64,
    /// Devices with a parent.
    pub with_parent: u64,
    /// Wall-clock time of the run.
    pub elapsed_seconds: f64,
    /// How many Edge devices were to get their modules.
    pub modules_sample: u64,
    /// Per-step timings.
    pub steps: Steps,
}

impl SdkResult {
    /// Seconds waited out for 429s, over all steps.
    pub fn waited_seconds(&self) -> f64 {
        self.steps.create.wait_seconds
            + self.steps.set_parent.wait_seconds
            + self.steps.set_modules.wait_seconds
    }

    /// 429 answers, over all steps.
    pub fn throttled(&self) -> u64 {
        self.steps.create.throttled
            + self.steps.set_parent.throttled
            + self.steps.set_modules.throttled
    }
}

/// The whole-hierarchy estimate of a device-by-device run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Create + set parent for every device (measured when every device went through both).
    pub identities: Duration,
    /// Whether `identities` was measured on every device rather than scaled from a sample.
    pub identities_measured: bool,
    /// Set modules for every Edge device with a deployment, work only.
    pub modules_work: Duration,
    /// Edge devices with a deployment.
    pub modules_devices: u64,
    /// The configuration quota's floor for those applies (fixed windows, sequential client).
    pub modules_quota_floor: Duration,
    /// The estimate: the work, or the quota floor plus the last window's share of the work
    /// when the quota is what holds the run back.
    pub total: Duration,
}

/// Scales the measured step averages to `devices` devices (`with_parent` of them with a parent,
/// `with_modules` Edge devices with a deployment) on a hub allowing `applies_per_minute`
/// applyConfigurationContent calls per minute.
///
/// A sequential client that waits out 429s spends `ceil(n / quota) - 1` full windows before its
/// last batch of applies, and its other work spreads over the windows; so the total is the work
/// alone, or the floor plus one window's share of the work, whichever is larger.
pub fn estimate(
    result: &SdkResult,
    devices: u64,
    with_parent: u64,
    with_modules: u64,
    applies_per_minute: u32,
) -> Estimate {
    let secs = Duration::from_secs_f64;
    let s = &result.steps;
    let identities_measured = s.create.devices == devices && s.set_parent.devices == with_parent;
    let identities = if identities_measured {
        secs(s.create.work_seconds + s.set_parent.work_seconds)
    } else {
        secs(
            s.create.per_device() * devices as f64 + s.set_parent.per_device() * with_parent as f64,
        )
    };
    let modules_work = secs(s.set_modules.per_device() * with_modules as f64);
    let work = identities + modules_work;
    let window = Duration::from_secs(60);
    let modules_quota_floor = fixed_window_floor(with_modules, applies_per_minute, window);
    let windows = with_modules
        .div_ceil(u64::from(applies_per_minute.max(1)))
        .max(1);
    let throttled_total = modules_quota_floor + work.div_f64(windows as f64);
    Estimate {
        identities,
        identities_measured,
        modules_work,
        modules_devices: with_modules,
        modules_quota_floor,
        total: work.max(throttled_total),
    }
}

/// How to run the script.
#[derive(Debug, Clone)]
pub struct SdkRun<'a> {
    /// The Python with azure-iot-hub installed (the repo's .venv).
    pub python: &'a Path,
    /// `sdk_create.py`.
    pub script: &'a Path,
    /// The emulator's --dir.
    pub hub_dir: &'a Path,
    /// The plan JSON.
    pub plan: &'a Path,
    /// Where the script writes its result.
    pub out: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Edge devices that get their modules set.
    pub modules_sample: u64,
    /// The run is stopped (and the benchmark fails) after this long.
    pub timeout: Duration,
}

/// Runs the script to completion and reads its result. The process dies with this one.
pub async fn run(options: &SdkRun<'_>) -> anyhow::Result<SdkResult> {
    let mut command = Command::new(options.python);
    command
        .arg(options.script)
        .arg("--hub-dir")
        .arg(options.hub_dir)
        .arg("--plan")
        .arg(options.plan)
        .arg("--out")
        .arg(&options.out)
        .arg("--modules-sample")
        .arg(options.modules_sample.to_string())
        .env("PYTHONUNBUFFERED", "1");
    let mut child = ManagedChild::spawn_command("sdk_create.py", command, &options.log, None)?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.exit_status() {
            break status;
        }
        if started.elapsed() > options.timeout {
            child.stop(Duration::from_secs(2));
            bail!(
                "sdk_create.py did not finish within {:?}; its log {} ends:\n{}",
                options.timeout,
                options.log.display(),
                child.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !status.success() {
        bail!(
            "sdk_create.py failed ({status}); its log {} ends:\n{}",
            options.log.display(),
            child.log_tail(20)
        );
    }
    let text = std::fs::read_to_string(&options.out)
        .with_context(|| format!("reading {}", options.out.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not the result JSON of sdk_create.py",
            options.out.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(devices: u64, work_seconds: f64) -> StepResult {
        StepResult {
            devices,
            work_seconds,
            wait_seconds: 0.0,
            throttled: 0,
        }
    }

    fn result(create: StepResult, set_parent: StepResult, set_modules: StepResult) -> SdkResult {
        SdkResult {
            sdk: "azure-iot-hub 2.7.0".into(),
            devices: 1000,
            edge_devices: 700,
            with_parent: 995,
            elapsed_seconds: 0.0,
            modules_sample: 25,
            steps: Steps {
                create,
                set_parent,
                set_modules,
            },
        }
    }

    #[test]
    fn parses_the_scripts_output() {
        let json = r#"{"sdk": "azure-iot-hub 2.7.0", "devices": 50, "edgeDevices": 35, "withParent": 45,
            "elapsedSeconds": 62.7, "modulesSample": 25,
            "steps": {"create": {"devices": 50, "workSeconds": 2.1, "waitSeconds": 0.0, "throttled": 0},
                      "setParent": {"devices": 45, "workSeconds": 3.8, "waitSeconds": 0.0, "throttled": 0},
                      "setModules": {"devices": 21, "workSeconds": 1.7, "waitSeconds": 55.0, "throttled": 1}}}"#;
        let r: SdkResult = serde_json::from_str(json).unwrap();
        assert_eq!(r.steps.set_modules.devices, 21);
        assert_eq!(r.throttled(), 1);
        assert_eq!(r.waited_seconds(), 55.0);
        assert!((r.steps.create.per_device() - 0.042).abs() < 1e-9);
        assert_eq!(StepResult::default().per_device(), 0.0);
    }

    #[test]
    fn identities_measured_on_every_device_are_taken_as_measured() {
        let r = result(step(1000, 40.0), step(995, 80.0), step(25, 2.5));
        let e = estimate(&r, 1000, 995, 700, 20);
        assert!(e.identities_measured);
        assert_eq!(e.identities, Duration::from_secs(120));
        assert_eq!(e.modules_work, Duration::from_secs(70));
        assert_eq!(e.modules_quota_floor, Duration::from_secs(34 * 60));
        // 35 windows: 34 full ones, then the last window's share of 190 s of work.
        let expected = Duration::from_secs(34 * 60) + Duration::from_secs(190).div_f64(35.0);
        assert_eq!(e.total, expected);
    }

    #[test]
    fn a_sample_is_scaled_by_the_step_averages() {
        let r = result(step(200, 8.0), step(195, 15.6), step(25, 2.5));
        let e = estimate(&r, 1000, 995, 700, 20);
        assert!(!e.identities_measured);
        assert_eq!(e.identities.as_millis(), 40_000 + 79_600);
    }

    #[test]
    fn without_a_binding_quota_the_estimate_is_the_work() {
        let r = result(step(1000, 40.0), step(995, 80.0), step(10, 1.0));
        let e = estimate(&r, 1000, 995, 10, 20);
        assert_eq!(e.modules_quota_floor, Duration::ZERO);
        assert_eq!(e.total, Duration::from_secs(121));
        let none = estimate(&r, 1000, 995, 0, 20);
        assert_eq!(none.total, Duration::from_secs(120));
    }
}
