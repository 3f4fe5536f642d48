#!/usr/bin/env python3
"""`make test`'s Rust part: every test binary of the workspace, several at a time.

`cargo test` runs its test binaries one after another. Most of ours are e2e tests that spend their
time waiting on a control plane, the emulator or a reconcile, so on two cores the suite finishes
far sooner when a few binaries run side by side (each starts its own etcd, kube-apiserver and
emulator on free loopback ports and its own folders, so they do not meet). Within a binary the
tests run as cargo would run them.

    scripts/run-tests.py [--jobs N] [-- test binary arguments...]

1. `cargo test --workspace --no-run --message-format=json` builds every test target (the same
   ones `cargo test --workspace` runs) and names their executables.
2. The executables run in a pool of N (default: EHO_TEST_JOBS, else 3), slowest-known first, each
   from its package's folder with the environment cargo gives a test (CARGO_MANIFEST_DIR,
   CARGO_PKG_NAME, ...); the doc tests (`cargo test --workspace --doc`) are one more job.
3. A binary's output is printed whole when it finishes, under a header, so outputs never
   interleave. At the end: one line per binary (PASS/FAIL, seconds) and exit status 1 if any
   failed. Nothing stops early: every binary runs (cargo's --no-fail-fast).

Arguments after the options go to every test binary (e.g. `-- --nocapture`, a name filter).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# Test binaries known to take longest (measured with `make test`); they start first so the pool
# does not end with one long binary running alone. Unknown ones keep cargo's order after these.
SLOW_FIRST = [
    "e2e-tests/chaos",
    "e2e-tests/operator_resilience",
    "e2e-tests/operator_identities",
    "e2e-tests/est",
    "e2e-tests/operator_certificates",
    "e2e-tests/tenancy",
    "e2e-tests/operator_deployments",
    "e2e-tests/tutorial_end_to_end",
]

print_lock = threading.Lock()


def cargo():
    return os.environ.get("CARGO", "cargo")


def build_test_binaries():
    """Builds the test targets; returns [(label, executable, package folder, package env)]."""
    cmd = [cargo(), "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"]
    print(f"run-tests: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"run-tests: building the tests failed (exit {proc.returncode}); see the errors above")
    binaries = []
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("profile", {}).get("test"):
            continue
        executable = msg.get("executable")
        if not executable:
            continue
        package = msg["manifest_path"]
        name = msg["target"]["name"]
        # package_id is "path+file:///...#name@version" (or "...#version" when the folder is the name).
        pkg_name, _, version = msg["package_id"].rsplit("#", 1)[1].rpartition("@")
        if not pkg_name:
            pkg_name = os.path.basename(os.path.dirname(package))
        label = f"{pkg_name}/{name}"
        binaries.append((label, executable, os.path.dirname(package), {
            "CARGO_MANIFEST_DIR": os.path.dirname(package),
            "CARGO_MANIFEST_PATH": package,
            "CARGO_PKG_NAME": pkg_name,
            "CARGO_PKG_VERSION": version,
            "CARGO_CRATE_NAME": name.replace("-", "_"),
        }))
    if not binaries:
        sys.exit("run-tests: cargo named no test executables")
    return binaries


def order(binaries):
    rank = {label: i for i, label in enumerate(SLOW_FIRST)}
    return sorted(binaries, key=lambda b: rank.get(b[0], len(SLOW_FIRST)))


def run_job(label, cmd, cwd, env):
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
        seconds = time.monotonic() - start
        out.seek(0)
        text = out.read()
    verdict = "PASS" if code == 0 else f"FAIL (exit {code})"
    with print_lock:
        print(f"\n===== {label}: {verdict} in {seconds:.0f}s =====", flush=True)
        sys.stdout.write(text)
        print(f"===== end of {label} =====", flush=True)
    return label, code, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("EHO_TEST_JOBS", "3")),
                        help="test binaries run at once (default: EHO_TEST_JOBS, else 3)")
    parser.add_argument("test_args", nargs=argparse.REMAINDER,
                        help="arguments for every test binary (after --)")
    args = parser.parse_args()
    if args.jobs < 1:
        sys.exit(f"run-tests: --jobs must be at least 1, not {args.jobs}")
    test_args = args.test_args[1:] if args.test_args[:1] == ["--"] else args.test_args

    binaries = order(build_test_binaries())
    print(f"run-tests: {len(binaries)} test binaries and the doc tests, {args.jobs} at a time",
          flush=True)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, label, [exe, *test_args], cwd, {**os.environ, **env})
                   for label, exe, cwd, env in binaries]
        futures.append(pool.submit(run_job, "doc tests",
                                   [cargo(), "test", "--workspace", "--doc", "--", *test_args],
                                   None, dict(os.environ)))
        results = [f.result() for f in futures]

    failed = [r for r in results if r[1] != 0]
    print(f"\nrun-tests: {len(results) - len(failed)} passed, {len(failed)} failed, "
          f"{time.monotonic() - start:.0f}s with {args.jobs} at a time", flush=True)
    for label, code, seconds in sorted(results, key=lambda r: -r[2]):
        print(f"  {'PASS' if code == 0 else 'FAIL'} {seconds:6.0f}s  {label}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
