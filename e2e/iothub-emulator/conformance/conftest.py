"""Fixtures that run the real iothub-emulator binary for the conformance suite.

The binary is `$IOTHUB_EMULATOR_BIN`, or `<workspace>/target/debug/iothub-emulator` (build it
with `cargo build -p iothub-emulator`). Each fixture starts its own emulator on a free port in a
fresh directory, waits for its `ready` line, and stops it afterwards.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from support import Hub

WORKSPACE = pathlib.Path(__file__).resolve().parents[3]
READY_TIMEOUT_SECONDS = 60


def emulator_binary() -> pathlib.Path:
    configured = os.environ.get("IOTHUB_EMULATOR_BIN")
    path = pathlib.Path(configured) if configured else WORKSPACE / "target" / "debug" / "iothub-emulator"
    if not path.is_file():
        # Failing (not skipping) keeps a missing build from looking like a passing suite.
        pytest.fail(
            f"iothub-emulator binary not found at {path}; build it with "
            "`cargo build -p iothub-emulator` or set IOTHUB_EMULATOR_BIN",
            pytrace=False,
        )
    return path


# The emulator's timing defaults follow Azure (queries lag writes by 3 s, configurations are
# evaluated every 300 s, requests over a throttle are queued 5 s, 429s carry no Retry-After).
# These tests check one request at a time, so they run with immediate timing unless a test asks
# for a value itself (`make_hub("--query-lag-ms", "1500")`); test_realism.py checks the defaults.
IMMEDIATE_TIMING = {
    "--query-lag-ms": "0",
    "--config-eval-interval-secs": "0",
    "--throttle-shaping-ms": "0",
    "--no-retry-after": "false",
}


def with_immediate_timing(extra_args):
    """`extra_args` plus IMMEDIATE_TIMING for every flag it does not give itself."""
    given = {a.split("=", 1)[0] for a in extra_args}
    args = list(extra_args)
    for flag, value in IMMEDIATE_TIMING.items():
        if flag not in given:
            args.append(f"{flag}={value}")
    return args


class RunningEmulator:
    """One emulator process with its state directory and logs."""

    def __init__(self, extra_args, immediate=True):
        binary = emulator_binary()  # before mkdtemp, so a missing binary leaves nothing behind
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="iothub-emulator-"))
        self.stdout_path = self.dir / "emulator.stdout"
        self.stderr_path = self.dir / "emulator.stderr"
        state_dir = self.dir / "state"
        state_dir.mkdir()
        self.state_dir = state_dir
        args = [str(binary), "--port", "0", "--dir", str(state_dir), *(with_immediate_timing(extra_args) if immediate else extra_args)]
        self.args = args
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self._wait_ready()

    def logs(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-4000:]}"

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            lines = self.stdout_path.read_text(errors="replace").splitlines()
            if any(line.split()[:1] == ["ready"] for line in lines):
                return
            if self.process.poll() is not None:
                self._fail(f"exited with status {self.process.returncode} before printing ready")
            time.sleep(0.05)
        self._fail(f"did not print ready within {READY_TIMEOUT_SECONDS}s")

    def _fail(self, what):
        self.stop()
        pytest.fail(f"iothub-emulator {' '.join(self.args)} {what}\n{self.logs()}", pytrace=False)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_hub(extra_args, timing="immediate"):
    """`timing="azure"` keeps the emulator's own (Azure's) timing defaults."""
    emulator = RunningEmulator(extra_args, immediate=timing == "immediate")
    try:
        hub = Hub.from_state_dir(emulator.state_dir, extra_args)
    except Exception as error:  # noqa: BLE001 - the message carries the emulator's logs
        emulator.cleanup()
        pytest.fail(f"emulator state in {emulator.state_dir} unusable: {error}\n{emulator.logs()}")
    hub.logs = emulator.logs
    return emulator, hub


@pytest.fixture(scope="session", params=["lenient", "strict"])
def hub(request):
    """An emulator shared by the SDK suite, once lenient (Azure's default) and once `--strict`.

    REQUESTS_CA_BUNDLE points at this emulator's CA while it runs, which is how the official SDK
    (msrest with trust_env) is told to trust it.
    """
    extra = ["--strict"] if request.param == "strict" else []
    emulator, running = start_hub(extra)
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(running.ca_path)
    try:
        yield running
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous
        emulator.cleanup()


@pytest.fixture()
def s1_hub():
    """A fresh emulator sized like one S1 unit, for quota tests (function scope: empty buckets)."""
    emulator, running = start_hub(["--sku", "S1", "--units", "1"])
    try:
        yield running
    finally:
        emulator.cleanup()


@pytest.fixture()
def make_hub():
    """Starts emulators with extra flags for one test (`make_hub("--query-lag-ms", "1500")`),
    with immediate timing unless `timing="azure"`.

    REQUESTS_CA_BUNDLE points at the CA of the most recently started one until the test ends,
    then the previous value (a session emulator's) comes back.
    """
    started = []
    previous = os.environ.get("REQUESTS_CA_BUNDLE")

    def make(*args, timing="immediate"):
        emulator, running = start_hub([str(a) for a in args], timing)
        started.append(emulator)
        os.environ["REQUESTS_CA_BUNDLE"] = str(running.ca_path)
        return running

    try:
        yield make
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous
        for emulator in started:
            emulator.cleanup()
