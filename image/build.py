#!/usr/bin/env python3
"""Build, or find already built, the bpftools container image ``localhost/bpftools:VERSION``.

    python3 image/build.py            # prints the image name; a no-op when nothing changed
    python3 image/build.py --force    # rebuild both layers

No registry is contacted. Two layers, each built only when its inputs change:

- the **base**, ``localhost/bpftools-base:bookworm-<key>``: Debian bookworm from ``debootstrap
  --variant=minbase`` (lab/build.py's archive access, chroot and cache: the same private apt state
  under /var/cache/bpftools-lab), with bcc (python3-bpfcc), the project's dependencies from Debian,
  the tools the live tools call and Debian's kernel headers (another kernel's: enough for
  tracepoint programs when the node's own are not mounted), imported with ``podman import``.
  ``<key>`` hashes the package versions the archive serves today and this file's text;
- the **project**: the wheel of this tree installed with pip (no dependency resolution: they come
  from Debian), committed with buildah; the image's ``bpftools.source`` label hashes the wheel's
  contents and the base's name, so an unchanged tree is a cache hit.

Needs root and the host packages debootstrap, debian-archive-keyring, buildah and podman.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("lab_build", os.path.join(REPO, "lab", "build.py"))
lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab)  # type: ignore

SUITE = "bookworm"
IMAGE = "localhost/bpftools"
BASE = "localhost/bpftools-base"
# bcc, the project's dependencies, pip to install the wheel, what the tools run (ip, modprobe, mount,
# nsenter, ps, mkfs for the repro workloads), and kernel headers for tracepoint-only use.
PACKAGES = ("python3", "python3-bpfcc", "python3-click", "python3-rich", "python3-pyelftools", "python3-pip",
            "iproute2", "kmod", "procps", "util-linux", "mount", "e2fsprogs", "linux-headers-amd64")
KEYED = ("python3", "python3-bpfcc", "python3-click", "python3-rich", "python3-pyelftools",
         "linux-headers-amd64")
ENTRYPOINT = "/usr/local/bin/bpftools-entrypoint"
# image/ scripts -> where the project layer puts them (deploy/npd/bpftools-plugin-monitor.json runs bpftools-npd)
SCRIPTS = {"entrypoint.sh": ENTRYPOINT, "bpftools-npd": "/usr/local/bin/bpftools-npd"}
REQUIRED_TOOLS = {"debootstrap": "debootstrap", "buildah": "buildah", "podman": "podman", "chroot": "coreutils"}


def log(msg: str) -> None:
    sys.stderr.write("image-build: %s\n" % msg)
    sys.stderr.flush()


def version() -> str:
    """The project's version (bpftools/__init__.py), the image's tag."""
    scope = {}  # type: Dict[str, str]
    with open(os.path.join(REPO, "bpftools", "__init__.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


def image_label(name: str, label: str) -> Optional[str]:
    """LABEL of local image NAME, or None when there is no such image."""
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{json .Labels}}", name],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    if proc.returncode != 0:
        return None
    return (json.loads(proc.stdout) or {}).get(label)


def image_id(name: str) -> Optional[str]:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, universal_newlines=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def base_key(offline: bool) -> Optional[str]:
    """The base's key from the versions the archive serves today; None when it cannot be asked."""
    if offline:
        return None
    apt = lab.HostApt(SUITE, lab.cache_root())
    try:
        apt.update()
        versions = apt.candidates(list(KEYED))
    except lab.BuildError as err:
        log("cannot ask the archive (%s): using the newest base built" % err)
        return None
    with open(os.path.abspath(__file__), "rb") as f:
        digest = hashlib.sha256(f.read() + json.dumps(versions, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def newest_base() -> Optional[str]:
    out = lab.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}\t{{.CreatedAt}}", BASE])
    rows = sorted((line.split("\t") for line in out.splitlines() if "\t" in line), key=lambda r: r[1])
    return rows[-1][0] if rows else None


def build_base(name: str, logf) -> None:
    """debootstrap + packages in a work directory under the lab cache, imported as image NAME."""
    work = tempfile.mkdtemp(prefix="image-%s-" % SUITE, dir=lab.cache_root())
    rootfs = os.path.join(work, "rootfs")
    try:
        log("debootstrap --variant=minbase %s (log: %s)" % (SUITE, logf.name))
        lab.run(["debootstrap", "--variant=minbase", "--keyring=%s" % lab.HOST_KEYRING, SUITE, rootfs, lab.MIRROR],
                logf)
        with open(os.path.join(rootfs, "etc/apt/sources.list"), "w") as f:
            f.write("\n".join(lab.sources_lines(SUITE, None)) + "\n")
        with open(os.path.join(rootfs, "etc/apt/apt.conf.d/90bpftools-image"), "w") as f:
            f.write('APT::Install-Recommends "false";\nAcquire::Languages "none";\n')
        shutil.copy("/etc/resolv.conf", os.path.join(rootfs, "etc/resolv.conf"))
        with lab.Chroot(rootfs, logf) as ch:
            log("apt-get install in the chroot: %s" % ", ".join(PACKAGES))
            ch.run("apt-get", "-q", "update")
            ch.run("apt-get", "-q", "-y", "dist-upgrade")
            ch.run("apt-get", "-q", "-y", "install", *PACKAGES)
            ch.run("apt-get", "clean")
        for rel in lab.TRIM:
            lab.remove_tree(os.path.join(rootfs, rel))
        os.makedirs(os.path.join(rootfs, "var/log"), exist_ok=True)
        os.remove(os.path.join(rootfs, "etc/resolv.conf"))
        log("podman import -> %s" % name)
        tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.call(["podman", "import", "--change", "ENV=LANG=C.UTF-8", "--change",
                                    "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "-", name],
                                   stdin=tar.stdout, stdout=logf, stderr=subprocess.STDOUT)
        tar.stdout.close()
        if tar.wait() != 0 or imported != 0:
            raise lab.BuildError("podman import of the root filesystem failed (log: %s)" % logf.name)
    finally:
        lab.remove_tree(work)


def prune_bases(keep: str, replaced: Optional[str]) -> None:
    """Remove the bases other than KEEP (older package versions or an older build script), and the
    image KEEP named before (REPLACED, an id: --force rebuilt it)."""
    out = lab.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", BASE])
    old = [name for name in out.split() if name != keep] + ([replaced] if replaced else [])
    for name in old:
        log("removing old base %s" % name)
        subprocess.call(["podman", "rmi", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build_wheel(out: str) -> str:
    """The project's wheel, built by the venv of scripts/setup (it has setuptools and wheel: no download)."""
    venv = os.path.join(REPO, ".venv", "bin", "python")
    python = venv if os.path.exists(venv) else sys.executable
    lab.run([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO])
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise lab.BuildError("expected one wheel, got %s" % wheels)
    return os.path.join(out, wheels[0])


def project_digest(wheel: str) -> str:
    """sha256 of the wheel's member names and contents (not of the zip: its timestamps change) and of
    the scripts the project layer adds."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for member in sorted(z.namelist()):
            h.update(member.encode() + b"\0" + z.read(member) + b"\0")
    for script in SCRIPTS:
        with open(os.path.join(HERE, script), "rb") as f:
            h.update(script.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


def build_project(base: str, wheel: str, source: str, name: str, logf) -> None:
    """The wheel installed on BASE, committed as NAME with the SOURCE label."""
    ctr = lab.run(["buildah", "from", "--pull-never", base]).strip()
    inside = "/tmp/" + os.path.basename(wheel)
    chroot = ["buildah", "run", "--isolation", "chroot", ctr, "--"]   # no OCI runtime needed to build
    try:
        lab.run(["buildah", "copy", ctr, wheel, inside], logf)
        for script, path in SCRIPTS.items():
            lab.run(["buildah", "copy", "--chmod", "0755", ctr, os.path.join(HERE, script), path], logf)
        lab.run(chroot + ["python3", "-m", "pip", "install", "--no-deps", "--no-index", "--break-system-packages",
                          "--no-compile", "-q", inside], logf)
        lab.run(chroot + ["rm", "-f", inside], logf)
        lab.run(["buildah", "config", "--entrypoint", json.dumps([ENTRYPOINT]), "--cmd", "--help",
                 "--label", "bpftools.source=%s" % source,
                 "--label", "org.opencontainers.image.title=bpftools",
                 "--label", "org.opencontainers.image.version=%s" % version(), ctr], logf)
        previous = image_id(name)
        lab.run(["buildah", "commit", "--rm", ctr, name], logf)
        ctr = ""
        if previous and previous != image_id(name):      # the tag moved: drop the image it named
            subprocess.call(["podman", "rmi", previous], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        if ctr:
            subprocess.call(["buildah", "rm", ctr], stdout=subprocess.DEVNULL)


def ensure(force: bool = False, offline: bool = False) -> str:
    """The image's name, built now where its inputs changed."""
    missing = sorted(set(pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None))
    if missing:
        raise lab.BuildError("missing host tools; apt-get install %s" % " ".join(missing))
    if os.geteuid() != 0:
        raise lab.BuildError("building the image needs root (debootstrap, chroot, podman's root storage)")
    root = lab.cache_root()
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    name = "%s:%s" % (IMAGE, version())
    with lab.suite_lock(root, "image-" + SUITE), open(os.path.join(root, "logs", "image-build.log"), "w") as logf:
        key = base_key(offline)
        base = "%s:%s-%s" % (BASE, SUITE, key) if key else newest_base()
        if base is None:
            raise lab.BuildError("no base image built yet and the archive cannot be reached")
        if force or subprocess.call(["podman", "image", "exists", base]) != 0:
            previous = image_id(base)
            build_base(base, logf)
            prune_bases(base, previous)
        work = tempfile.mkdtemp(prefix="image-wheel-")
        try:
            wheel = build_wheel(work)
            source = "%s %s" % (project_digest(wheel), base)
            if force or image_label(name, "bpftools.source") != source:
                log("installing %s on %s -> %s" % (os.path.basename(wheel), base, name))
                build_project(base, wheel, source, name, logf)
        finally:
            shutil.rmtree(work)
    return name


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild the base and the project layer")
    parser.add_argument("--offline", action="store_true", help="do not ask the archive; use the newest base built")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        name = ensure(force=args.force, offline=args.offline)
    except (lab.BuildError, OSError) as err:
        log("error: %s" % err)
        return 1
    log("%s in %.1f s" % (name, time.time() - started))
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
