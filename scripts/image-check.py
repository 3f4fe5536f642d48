#!/usr/bin/env python3
"""`make image-check`: checks the image `make image` wrote, target/image/edge-hierarchy-operator.tar.

Reads the docker-archive with the standard library only (manifest.json, the config, the layer) and
checks what the chart and the README rely on: the tag, the platform, the user, entrypoint and
default argument, the same config as the Dockerfile's last stage, the layer's digests, owners and
modes, the binary being the build `make image` packed (release, or debug under `make test`), the
passwd entry and the CA roots. Then it unpacks the layer and runs the binary inside it as
65532:65532 on a read-only root, in its own mount and network namespaces (unshare + chroot, no
container runtime): `--version`, `crd` (must equal crds/edgehierarchy.yaml) and `run` configured
in-cluster the way kubelet would (service-account token and CA mounted read-only,
KUBERNETES_SERVICE_HOST/PORT, the chart's environment) against a port where nothing listens, which
must get as far as listing EdgeHierarchies. A missing library, a wrong loader path or a write to
the root file system fails these runs.

Needs root or unprivileged user namespaces (unshare), and openssl (scripts/install-deps.sh). It
never skips: anything it cannot check is a failure. Prints one line per check, then
`image-check: N passed, M failed`; exits 1 if anything failed.
"""

import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(REPO, "target", "image", "edge-hierarchy-operator.tar")
TAG = "edge-hierarchy-operator:dev"
BINARY = "edge-hierarchy-operator"
USER = "65532:65532"
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
PROFILE_FILE = os.path.join(REPO, "target", "image", "profile")


def packed_profile():
    """The build scripts/image.sh packed (release, or debug under `make test`), or "" if unknown."""
    if not os.path.isfile(PROFILE_FILE):
        return ""
    with open(PROFILE_FILE) as f:
        profile = f.read().strip()
    return profile if profile in ("release", "debug") else ""


PROFILE = packed_profile()
PACKED_BINARY = os.path.join(TARGET_DIR, PROFILE, BINARY)
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def fail_all(message):
    check("image-check", False, message)
    summary()


def summary():
    passed = sum(results)
    failed = len(results) - passed
    print(f"image-check: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def dockerfile_final_stage(path):
    """The instructions after the Dockerfile's last FROM, as (KEYWORD, rest) pairs."""
    lines, joined = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not joined and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            joined += line
            if joined.strip():
                keyword, _, rest = joined.strip().partition(" ")
                lines.append((keyword.upper(), rest.strip()))
            joined = ""
    last_from = max(i for i, (k, _) in enumerate(lines) if k == "FROM")
    return lines[last_from + 1:]


def expected_config_from_dockerfile():
    expected = {"Env": [], "Labels": {}}
    for keyword, rest in dockerfile_final_stage(os.path.join(REPO, "Dockerfile")):
        if keyword == "ENV":
            expected["Env"] += [kv for kv in shlex.split(rest)]
        elif keyword == "LABEL":
            for kv in shlex.split(rest):
                k, _, v = kv.partition("=")
                expected["Labels"][k] = v
        elif keyword == "USER":
            expected["User"] = rest
        elif keyword == "WORKDIR":
            expected["WorkingDir"] = rest
        elif keyword in ("ENTRYPOINT", "CMD"):
            expected["Entrypoint" if keyword == "ENTRYPOINT" else "Cmd"] = json.loads(rest)
    return expected


def read_archive():
    with tarfile.open(ARCHIVE) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("manifest.json"))
        if len(manifest) != 1:
            fail_all(f"manifest.json lists {len(manifest)} images, expected 1")
        entry = manifest[0]
        config_bytes = archive.extractfile(entry["Config"]).read()
        layers = [archive.extractfile(name).read() for name in entry["Layers"]]
    return names, entry, config_bytes, layers


def unpack(layer_tar, root):
    """Unpacks a layer (only folders, regular files and symlinks, names inside root)."""
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as layer:
        for member in layer.getmembers():
            name = os.path.normpath(member.name)
            if name.startswith("/") or name == ".." or name.startswith("../"):
                raise ValueError(f"layer entry {member.name!r} points outside the root")
            path = os.path.join(root, name)
            if member.isdir():
                os.makedirs(path, exist_ok=True)
            elif member.isreg():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(layer.extractfile(member).read())
            elif member.issym():
                os.symlink(member.linkname, path)
            else:
                raise ValueError(f"layer entry {member.name!r} has type {member.type!r}")
            if not member.issym():
                os.chmod(path, member.mode)


def contained_run(root, argv, env, mounts=(), timeout=60):
    """Runs argv inside root (chroot) as USER, with root read-only, /proc mounted, extra read-only
    bind mounts (host folder, path inside root), own mount, PID and network namespaces."""
    steps = [
        "set -eu",
        "ip link set lo up",
        'mount --bind "$ROOT" "$ROOT"',
        'mount -o remount,bind,ro "$ROOT"',
        'mount -t proc proc "$ROOT/proc"',
    ]
    for i, (source, inside) in enumerate(mounts):
        steps.append(f'mount --bind -o ro "$M{i}" "$ROOT{inside}"')
    as_user = ["--userspec", USER] if os.geteuid() == 0 else []
    # env and chroot are the host's, by absolute path: the environment is the container's.
    steps.append(f"exec {shutil.which('env')} -i " + " ".join(shlex.quote(e) for e in env)
                 + f" {shutil.which('chroot')} "
                 + " ".join(as_user) + ' "$ROOT" ' + " ".join(shlex.quote(a) for a in argv))
    ns = ["unshare", "--mount", "--net", "--pid", "--fork"]
    if os.geteuid() != 0:
        ns.insert(1, "--map-root-user")
    child_env = dict(os.environ, ROOT=root, **{f"M{i}": m[0] for i, m in enumerate(mounts)})
    return subprocess.run(ns + ["sh", "-c", "\n".join(steps)], env=child_env,
                          capture_output=True, text=True, timeout=timeout)


def service_account(folder):
    """A kubelet-style service-account folder: token, namespace and a CA certificate."""
    os.makedirs(folder)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", os.path.join(folder, "..", "ca.key"), "-out", os.path.join(folder, "ca.crt"),
                    "-subj", "/CN=image-check", "-days", "1"], check=True, capture_output=True)
    with open(os.path.join(folder, "token"), "w") as f:
        f.write("image-check-token")
    with open(os.path.join(folder, "namespace"), "w") as f:
        f.write("edge-system")


def main():
    if not os.path.isfile(ARCHIVE):
        fail_all(f"{ARCHIVE} does not exist; run `make image` (make image-check does)")
    if not PROFILE:
        fail_all(f"{PROFILE_FILE} does not name the packed build (release or debug); run `make image`")
    if not os.path.isfile(PACKED_BINARY):
        fail_all(f"{PACKED_BINARY} does not exist; run `make image`")
    for tool in ("unshare", "chroot", "ip", "openssl"):
        if shutil.which(tool) is None:
            fail_all(f"{tool} is not on PATH (util-linux, coreutils, iproute2, openssl)")

    names, entry, config_bytes, layers = read_archive()
    check("archive tag", entry["RepoTags"] == [TAG], f"RepoTags {entry['RepoTags']}")
    check("archive holds its config and layers", {entry["Config"], *entry["Layers"]} <= names)
    check("one layer", len(layers) == 1, f"{len(layers)} layers")
    config = json.loads(config_bytes)
    check("config digest", entry["Config"].split(".")[0].removeprefix("sha256:")
          == hashlib.sha256(config_bytes).hexdigest())

    host_arch = OCI_ARCH.get(platform.machine(), platform.machine())
    check("platform", (config.get("os"), config.get("architecture")) == ("linux", host_arch),
          f"{config.get('os')}/{config.get('architecture')}, host linux/{host_arch}")
    c = config.get("config", {})
    check("user", c.get("User") == USER, repr(c.get("User")))
    check("entrypoint and default argument",
          (c.get("Entrypoint"), c.get("Cmd")) == ([f"/{BINARY}"], ["run"]),
          f"Entrypoint {c.get('Entrypoint')} Cmd {c.get('Cmd')}")
    expected = expected_config_from_dockerfile()
    actual = {k: c.get(k) for k in expected}
    check("config equals the Dockerfile's last stage", actual == expected,
          "" if actual == expected else f"image {actual}, Dockerfile {expected}")

    layer_tar = [gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer for layer in layers][0]
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    check("layer diff_id", config.get("rootfs", {}).get("diff_ids") == [diff_id])

    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as layer:
        members = {os.path.normpath(m.name): m for m in layer.getmembers()}
        files = {name: layer.extractfile(m).read() for name, m in members.items() if m.isreg()}
    bad_owner = [n for n, m in members.items() if (m.uid, m.gid) != (0, 0)]
    check("every file owned by 0:0", not bad_owner, ", ".join(bad_owner[:5]))
    special = [n for n, m in members.items() if m.mode & 0o6000 or not (m.isdir() or m.isreg() or m.issym())]
    check("no setuid/setgid or device files", not special, ", ".join(special[:5]))
    binary = members.get(BINARY)
    check(f"/{BINARY} is a regular file with mode 0755",
          binary is not None and binary.isreg() and binary.mode == 0o755,
          "missing" if binary is None else oct(binary.mode))
    # scripts/image.sh records which profile it packed; the image must hold exactly that build.
    with open(PACKED_BINARY, "rb") as f:
        check(f"/{BINARY} is the {PROFILE} build {PACKED_BINARY}", files.get(BINARY) == f.read())
    tmp = members.get("tmp")
    check("/tmp is 1777", tmp is not None and tmp.isdir() and tmp.mode == 0o1777)
    passwd = files.get("etc/passwd", b"").decode().splitlines()
    check("/etc/passwd has nonroot 65532:65532", any(l.startswith("nonroot:x:65532:65532:") for l in passwd))
    check("/etc/group has 65532", b"nonroot:x:65532:" in files.get("etc/group", b""))
    roots = files.get("etc/ssl/certs/ca-certificates.crt", b"").count(b"-----BEGIN CERTIFICATE-----")
    check("public CA roots", roots >= 100, f"{roots} certificates in /etc/ssl/certs/ca-certificates.crt")

    work = tempfile.mkdtemp(prefix="image-check.")
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        unpack(layer_tar, root)
        os.chmod(root, 0o755)
        # Mount points a container runtime would create before making the root read-only.
        sa_inside = "/var/run/secrets/kubernetes.io/serviceaccount"
        for inside in ("/proc", sa_inside):
            os.makedirs(root + inside, exist_ok=True)
        image_env = c.get("Env") or []
        mode = f"as {USER}" if os.geteuid() == 0 else "as namespace root (not root: cannot switch to 65532)"

        host = subprocess.run([PACKED_BINARY, "--version"], capture_output=True, text=True, check=True).stdout
        r = contained_run(root, [f"/{BINARY}", "--version"], image_env)
        check(f"--version runs inside the image {mode}, root read-only",
              r.returncode == 0 and r.stdout == host, (r.stdout + r.stderr).strip()[:300])

        with open(os.path.join(REPO, "crds", "edgehierarchy.yaml")) as f:
            crd = f.read()
        r = contained_run(root, [f"/{BINARY}", "crd"], image_env)
        same = r.returncode == 0 and r.stdout == crd
        check("crd inside the image equals crds/edgehierarchy.yaml", same,
              f"{len(r.stdout)} bytes" if same else r.stderr.strip()[:300] or f"{len(r.stdout)} bytes, differ")

        # `run` as the chart starts it: args [run] replace CMD; its env; in-cluster config.
        sa = os.path.join(work, "serviceaccount")
        service_account(sa)
        chart_env = image_env + [
            "RUST_LOG=info,kube=warn", "LOG_JSON=true", "POD_NAME=image-check", "METRICS_ADDR=0.0.0.0:8080",
            "KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=9",
        ]
        r = contained_run(root, [f"/{BINARY}", "run"], chart_env, mounts=[(sa, sa_inside)])
        reached = "cannot list EdgeHierarchy resources" in r.stderr
        check("run inside the image loads the in-cluster config and calls the API server",
              r.returncode != 0 and reached and "cannot reach Kubernetes" not in r.stderr,
              f"exit {r.returncode}: " + r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else f"exit {r.returncode}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary()


if __name__ == "__main__":
    main()
