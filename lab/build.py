#!/usr/bin/env python3
"""Build, or find in the cache, the QEMU lab image of one Debian suite: a real Debian kernel and its root filesystem.

    python3 lab/build.py bookworm            # prints the image directory
    python3 lab/build.py trixie --force      # rebuild even when cached
    python3 lab/build.py bullseye --bcc v0.10.0   # bcc built from that tag instead of python3-bpfcc

An image is ``/var/cache/bpftools-lab/<suite>-<key>/`` (``BPFTOOLS_LAB_CACHE`` moves the root) with
``vmlinuz``, ``base.cpio`` (an uncompressed initramfs: debootstrap minbase + bcc + pytest + the
kernel's headers and the modules the tests load), ``manifest.json`` and ``build.log``. ``<key>`` hashes
the inputs: the suite, the package versions the archive serves today (kernel, headers, bcc, python3,
pytest, ...) and this file's own text, so a kernel security update or an edit here rebuilds, and
anything else is a cache hit (about 2 s: one ``apt-get update`` against private lists).

With ``--bcc TAG`` (bullseye only: its LLVM 9 is the one old bcc tags build with) the image is
``<suite>-bcc-<tag>-<key>/``: bcc's source at TAG (and its libbpf submodule) comes from git
clones under ``<cache>/src/`` (``BPFTOOLS_LAB_BCC_GIT`` / ``BPFTOOLS_LAB_LIBBPF_GIT`` name other
ones), is built in the chroot against the suite's llvm-9/libclang-9 within BCC_BUILD_TIMEOUT_S,
installed, and the compilers and LLVM are purged again; the key adds the tag's and libbpf's
commits, the LLVM version and the backports from lab/bcc-patches/ applied to a tag that lacks them
(v0.10.0: asm_inline, without which clang cannot read 5.4+ kernel headers).

Only Debian's archive is contacted (and, for ``--bcc``, GitHub when the clones are missing): apt
runs with its own sources list and state directories under the cache root (never the host's), and
the root filesystem gets its packages from the suite, its -updates and its -security (where the
newest kernel and its headers live). Needs root and the host
packages listed in lab/README.md. Works with the Python 3.6+ standard library only.
"""
import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional

from collections import namedtuple

SUITES = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"}
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
HOST_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_CACHE = "/var/cache/bpftools-lab"

# Installed into the root filesystem from the suite (no pip in the VM: the project runs on the
# suite's own python3 and bcc). The kernel headers are added by version; linux-kbuild, the
# -common headers and the matching gcc come with them as dependencies.
ROOTFS_PACKAGES = (
    "python3", "python3-bpfcc", "python3-pytest", "python3-click", "python3-rich",
    "python3-pyelftools", "python3-hypothesis", "kmod", "iproute2", "procps", "util-linux",
    "mount", "e2fsprogs", "gcc", "make", "libc6-dev",
)
# Versions that go into the cache key (the rest follows from the suite and these).
KEYED_PACKAGES = ("python3", "python3-bpfcc", "python3-pytest", "python3-click", "python3-rich",
                  "python3-pyelftools", "python3-hypothesis")
# Kernel modules copied from the image package (with their dependencies); the tests load them.
# ext4 and jbd2 ask the crypto API for "crc32c" at mount time, a request modules.dep does not
# show: crc32c_generic is the implementation that works under TCG (no SSE4.2 for crc32c-intel).
MODULES = ("loop", "veth", "dummy", "bridge", "ext4", "crc32c_generic")
# Dropped from the root filesystem: it is unpacked into RAM at every boot.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old", "var/log")

REQUIRED_TOOLS = {"debootstrap": "debootstrap", "cpio": "cpio", "apt-get": "apt",
                  "chroot": "coreutils"}

Resolved = namedtuple("Resolved", "kernel_release kernel_version versions bcc")
Resolved.__new__.__defaults__ = (None,)  # bcc: None, or a BccSource for a --bcc image
Image = namedtuple("Image", "suite path vmlinuz base_cpio kernel_release manifest")


# --bcc TAG: bcc built from its git tag in the chroot, replacing python3-bpfcc. Only bullseye: its
# llvm-9 is older than the LLVM 10 API changes that bcc before 0.13 does not know (iovisor/bcc #2782).
BCC_SUITES = {"bullseye": "9"}  # suite -> LLVM major version to build with
BCC_GIT_URL = "https://github.com/iovisor/bcc.git"
LIBBPF_GIT_URL = "https://github.com/libbpf/libbpf.git"
# g++ and libfl-dev (FlexLexer.h) are not pulled in by the others without recommends.
BCC_BUILD_PACKAGES = ("g++", "cmake", "bison", "flex", "libfl-dev", "libedit-dev", "libelf-dev",
                      "zlib1g-dev", "python3-distutils", "llvm-{llvm}-dev", "libclang-{llvm}-dev",
                      "clang-{llvm}")
# Runtime libraries of libbcc.so (LLVM and clang are linked in statically): kept when the build
# packages are purged.
BCC_RUNTIME_PACKAGES = ("libelf1", "zlib1g", "libtinfo6", "libz3-4")
# configure + make + install of bcc in the chroot: measured 2-3 minutes on 2 cores (lab/README.md).
BCC_BUILD_TIMEOUT_S = 1800
# Backports applied to tags that lack them: (patch file under lab/bcc-patches, the file it changes, a
# string whose presence there means the tag has the fix already).
BCC_PATCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bcc-patches")
BCC_BACKPORTS = (("asm_inline-linux-5.4.patch", "src/cc/export/helpers.h", "asm_inline"),)
BccSource = namedtuple("BccSource", "tag commit libbpf_commit llvm patches")
BccSource.__new__.__defaults__ = ((),)  # patches: ((file name, sha256), ...) applied in this order


class BuildError(Exception):
    """The image could not be built (a missing tool, a network or package failure)."""


def cache_root() -> str:
    """Where images, apt state, locks and run logs live (outside any clone)."""
    return os.environ.get("BPFTOOLS_LAB_CACHE", DEFAULT_CACHE)


def script_digest() -> str:
    """sha256 of this file: part of every cache key."""
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def log(msg: str) -> None:
    sys.stderr.write("lab-build: %s\n" % msg)
    sys.stderr.flush()


def check_host() -> None:
    """Fail early, naming the apt packages the caller has to install."""
    if os.geteuid() != 0:
        raise BuildError("building a lab image needs root (debootstrap, chroot)")
    missing = sorted(set(pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None))
    if missing:
        raise BuildError("missing host tools; apt-get install %s" % " ".join(missing))


def run(cmd: List[str], logf=None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> str:
    """Run CMD; its output goes to LOGF (or is returned when LOGF is None). Raises BuildError."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if logf is None else logf,
                            stderr=subprocess.STDOUT, universal_newlines=True, env=env, cwd=cwd)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise BuildError("%s exited %d%s" % (" ".join(cmd[:3]), proc.returncode,
                                              (": " + out.strip()[-2000:]) if out else ""))
    return out or ""


def sources_lines(suite: str, signed_by: Optional[str]) -> List[str]:
    """The suite, its -updates and its -security, main only."""
    opt = "[signed-by=%s] " % signed_by if signed_by else ""
    return ["deb %s%s %s main" % (opt, MIRROR, suite),
            "deb %s%s %s-updates main" % (opt, MIRROR, suite),
            "deb %s%s %s-security main" % (opt, SECURITY_MIRROR, suite)]


class HostApt(object):
    """apt-get/apt-cache on the host with a private sources list and state: never the host's own."""

    def __init__(self, suite: str, root: str) -> None:
        self.dir = os.path.join(root, "apt", suite)
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        status = os.path.join(self.dir, "status")
        if not os.path.exists(status):
            open(status, "w").close()
        with open(os.path.join(self.dir, "sources.list"), "w") as f:
            f.write("\n".join(sources_lines(suite, HOST_KEYRING)) + "\n")
        d = self.dir
        self.options = [
            "-o", "Dir::Etc::SourceList=%s/sources.list" % d,
            "-o", "Dir::Etc::SourceParts=%s/sources.list.d" % d,
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", "Dir::Etc::PreferencesParts=%s/preferences.d" % d,
            "-o", "Dir::State::Lists=%s/lists" % d,
            "-o", "Dir::State::Status=%s" % status,
            "-o", "Dir::Cache=%s/cache" % d,
            "-o", "Acquire::Languages=none",
            "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
            "-o", "Debug::NoLocking=1",
        ]

    def update(self) -> None:
        run(["apt-get"] + self.options + ["-q", "update"])

    def candidates(self, packages: List[str]) -> Dict[str, str]:
        """Candidate version of each package (the highest over the three suites)."""
        out = run(["apt-cache"] + self.options + ["policy"] + list(packages))
        found = {}  # type: Dict[str, str]
        current = None
        for line in out.splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                current = line[:-1]
            elif current and line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                if version != "(none)":
                    found[current] = version
        missing = [p for p in packages if p not in found]
        if missing:
            raise BuildError("not in the archive: %s" % ", ".join(missing))
        return found

    def depends(self, package: str, version: str) -> str:
        """The Depends field of PACKAGE at VERSION."""
        out = run(["apt-cache"] + self.options + ["show", "%s=%s" % (package, version)])
        for line in out.splitlines():
            if line.startswith("Depends:"):
                return line.split(":", 1)[1].strip()
        raise BuildError("%s %s has no Depends" % (package, version))


def keyed_packages(suite: str, bcc_tag: Optional[str]) -> List[str]:
    """Packages whose versions go into the key: for a --bcc image LLVM and clang replace python3-bpfcc."""
    if bcc_tag is None:
        return list(KEYED_PACKAGES)
    llvm = BCC_SUITES[suite]
    return [p for p in KEYED_PACKAGES if p != "python3-bpfcc"] + [
        "llvm-%s-dev" % llvm, "libclang-%s-dev" % llvm, "clang-%s" % llvm]


def resolve(suite: str, root: str, bcc_tag: Optional[str] = None) -> Resolved:
    """Ask the archive which kernel (and which keyed packages) an image built today gets; with
    BCC_TAG, also which commits of bcc and libbpf that tag means."""
    apt = HostApt(suite, root)
    apt.update()
    wanted = ["linux-image-amd64", "linux-headers-amd64"] + keyed_packages(suite, bcc_tag)
    versions = apt.candidates(wanted)
    meta_version = versions["linux-image-amd64"]
    m = re.search(r"\blinux-image-(\S+)-amd64 \(= ([^)]+)\)", apt.depends("linux-image-amd64", meta_version))
    if not m:
        raise BuildError("cannot find the kernel package behind linux-image-amd64 %s" % meta_version)
    release = m.group(1) + "-amd64"
    headers_dep = apt.depends("linux-headers-amd64", versions["linux-headers-amd64"])
    if "linux-headers-%s " % release not in headers_dep + " ":
        raise BuildError("linux-headers-amd64 does not match kernel %s: %s" % (release, headers_dep))
    keyed = dict((p, versions[p]) for p in keyed_packages(suite, bcc_tag))
    bcc = resolve_bcc(suite, bcc_tag, root) if bcc_tag is not None else None
    return Resolved(kernel_release=release, kernel_version=m.group(2), versions=keyed, bcc=bcc)


def git(repo: str, *args: str) -> str:
    return run(["git", "-c", "safe.directory=*", "-C", repo] + list(args)).strip()


def git_repo(env: str, name: str, url: str, root: str) -> str:
    """The git repository named by $ENV, else <cache>/src/NAME (cloned bare from URL when missing)."""
    given = os.environ.get(env)
    if given:
        if not os.path.isdir(given):
            raise BuildError("%s=%s is not a directory" % (env, given))
        return given
    path = os.path.join(root, "src", name)
    if not os.path.isdir(path):
        if shutil.which("git") is None:
            raise BuildError("--bcc needs git on the host (apt-get install git)")
        log("cloning %s into %s" % (url, path))
        remove_tree(path + ".tmp")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        run(["git", "clone", "--bare", "--quiet", url, path + ".tmp"])
        os.rename(path + ".tmp", path)
    return path


def git_commit(repo: str, rev: str, fetch_from_origin: bool) -> str:
    """The commit REV names in REPO; fetches tags (or everything) from origin once when it is missing
    and REPO is one of ours."""
    for attempt in (0, 1):
        try:
            return git(repo, "rev-parse", "--verify", "--quiet", rev + "^{commit}")
        except BuildError:
            if attempt or not fetch_from_origin:
                raise BuildError("%s has no commit %s" % (repo, rev))
            run(["git", "-c", "safe.directory=*", "-C", repo, "fetch", "--quiet", "origin",
                 "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
    raise AssertionError("unreachable")


def resolve_bcc(suite: str, tag: str, root: str) -> BccSource:
    """bcc's commit at TAG and the libbpf commit its src/cc/libbpf submodule pins (None if it has none)."""
    if suite not in BCC_SUITES:
        raise BuildError("--bcc is supported on %s only (LLVM %s)" % (
            ", ".join(sorted(BCC_SUITES)), ", ".join(sorted(set(BCC_SUITES.values())))))
    if not re.match(r"^v\d+\.\d+\.\d+$", tag):
        raise BuildError("--bcc takes a release tag such as v0.10.0, not %r" % tag)
    ours = not os.environ.get("BPFTOOLS_LAB_BCC_GIT")
    bcc_repo = git_repo("BPFTOOLS_LAB_BCC_GIT", "bcc.git", BCC_GIT_URL, root)
    commit = git_commit(bcc_repo, "refs/tags/" + tag, ours)
    entry = git(bcc_repo, "ls-tree", commit, "src/cc/libbpf")  # "160000 commit SHA\tsrc/cc/libbpf"
    libbpf = None
    if entry:
        libbpf = entry.split()[2]
        ours = not os.environ.get("BPFTOOLS_LAB_LIBBPF_GIT")
        libbpf_repo = git_repo("BPFTOOLS_LAB_LIBBPF_GIT", "libbpf.git", LIBBPF_GIT_URL, root)
        git_commit(libbpf_repo, libbpf, ours)
    patches = []
    for name, path, fixed_if in BCC_BACKPORTS:
        try:
            fixed = fixed_if in git(bcc_repo, "show", "%s:%s" % (commit, path))
        except BuildError:
            fixed = True  # no such file at this tag: nothing to patch
        if not fixed:
            with open(os.path.join(BCC_PATCH_DIR, name), "rb") as f:
                patches.append((name, hashlib.sha256(f.read()).hexdigest()))
    return BccSource(tag=tag, commit=commit, libbpf_commit=libbpf, llvm=BCC_SUITES[suite],
                     patches=tuple(patches))


def cache_key(suite: str, resolved: Resolved) -> str:
    """Short hash of everything that decides the image's content."""
    doc = {"suite": suite, "kernel": [resolved.kernel_release, resolved.kernel_version],
           "versions": resolved.versions, "script": script_digest()}
    if resolved.bcc is not None:
        doc["bcc"] = list(resolved.bcc)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def image_name(suite: str, bcc_tag: Optional[str] = None) -> str:
    """The name an image's directory, lock and logs go by: the suite, or e.g. bullseye-bcc-v0.10.0."""
    return suite if bcc_tag is None else "%s-bcc-%s" % (suite, bcc_tag)


def image_dirs(name: str, root: str) -> List[str]:
    """The directories of the images named NAME (NAME-KEY and leftover NAME-KEY.tmp), not those of
    another name that starts alike (bullseye-KEY vs bullseye-bcc-v0.10.0-KEY)."""
    pattern = re.compile(r"^%s-[0-9a-f]{16}(\.tmp)?$" % re.escape(name))
    return sorted(os.path.join(root, n) for n in os.listdir(root) if pattern.match(n)) \
        if os.path.isdir(root) else []


def load_image(suite: str, path: str) -> Optional[Image]:
    """The finished image at PATH, or None when it is absent or incomplete."""
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path) as f:
        manifest = json.load(f)
    vmlinuz, base = os.path.join(path, "vmlinuz"), os.path.join(path, "base.cpio")
    if not (os.path.isfile(vmlinuz) and os.path.isfile(base)):
        return None
    return Image(suite, path, vmlinuz, base, manifest["kernel_release"], manifest)


def newest_cached(suite: str, root: str) -> Optional[Image]:
    """The newest finished image of SUITE built by this very script (for offline use)."""
    digest = script_digest()
    images = [load_image(suite, p) for p in image_dirs(suite, root)]
    images = [i for i in images if i is not None and i.manifest.get("script_sha256") == digest]
    images.sort(key=lambda i: i.manifest.get("built_at", 0))
    return images[-1] if images else None


@contextlib.contextmanager
def suite_lock(root: str, suite: str) -> Iterator[None]:
    """Serialise builds of one suite across processes."""
    os.makedirs(os.path.join(root, "locks"), exist_ok=True)
    with open(os.path.join(root, "locks", suite + ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("another build of %s is running; waiting for its lock" % suite)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_under(path: str) -> List[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    prefix = os.path.realpath(path) + "/"
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_tree(path: str) -> None:
    """rm -rf PATH, unmounting anything a killed build left mounted inside it first."""
    if not os.path.lexists(path):
        return
    for point in _mounts_under(path):
        subprocess.call(["umount", "-l", point])
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


class Chroot(object):
    """Commands inside the root filesystem being built, with /proc mounted while it lives."""

    ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}

    def __init__(self, path: str, logf) -> None:
        self.path, self.logf = path, logf

    def __enter__(self) -> "Chroot":
        run(["mount", "-t", "proc", "proc", os.path.join(self.path, "proc")], self.logf)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.call(["umount", "-l", os.path.join(self.path, "proc")])

    def run(self, *cmd: str) -> None:
        run(["chroot", self.path] + list(cmd), self.logf, env=self.ENV)

    def output(self, *cmd: str) -> str:
        return run(["chroot", self.path] + list(cmd), None, env=self.ENV)


def module_closure(modules_dep: str, wanted: List[str], builtin: List[str]) -> List[str]:
    """Paths (relative to /lib/modules/VER) of WANTED modules and everything they depend on.

    ``modules_dep`` is the text of modules.dep (``path: dep dep``); ``builtin`` the lines of
    modules.builtin. A module that is neither a file nor built in is an error.
    """
    def name_of(path: str) -> str:
        base = os.path.basename(path)
        return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")

    deps = {}  # type: Dict[str, List[str]]
    by_name = {}  # type: Dict[str, str]
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[name_of(path)] = path
    builtin_names = set(name_of(b) for b in builtin)
    out = []  # type: List[str]
    todo = []
    for mod in wanted:
        key = mod.replace("-", "_")
        if key in by_name:
            todo.append(by_name[key])
        elif key not in builtin_names:
            raise BuildError("kernel module %s is neither a module nor built in" % mod)
    while todo:
        path = todo.pop()
        if path not in out:
            out.append(path)
            todo.extend(deps.get(path, []))
    return sorted(out)


def _build_rootfs(suite: str, resolved: Resolved, work: str, rootfs: str, logf, step,
                  build_only: Dict[str, str]) -> Dict[str, str]:
    """debootstrap, packages, kernel files and base.cpio in WORK; returns the installed versions (and
    puts those of packages that were installed only to build bcc, and purged again, in BUILD_ONLY)."""
    release = resolved.kernel_release
    step("debootstrap --variant=minbase %s (log: %s)" % (suite, logf.name))
    run(["debootstrap", "--variant=minbase", "--keyring=%s" % HOST_KEYRING, suite, rootfs, MIRROR],
        logf)
    with open(os.path.join(rootfs, "etc/apt/sources.list"), "w") as f:
        f.write("\n".join(sources_lines(suite, None)) + "\n")
    with open(os.path.join(rootfs, "etc/apt/apt.conf.d/90bpftools-lab"), "w") as f:
        f.write('APT::Install-Recommends "false";\nAcquire::Languages "none";\n')
    with open(os.path.join(rootfs, "usr/sbin/policy-rc.d"), "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(os.path.join(rootfs, "usr/sbin/policy-rc.d"), 0o755)
    shutil.copy("/etc/resolv.conf", os.path.join(rootfs, "etc/resolv.conf"))
    bcc = resolved.bcc
    packages = list(ROOTFS_PACKAGES)
    if bcc is not None:
        packages = [p for p in packages if p != "python3-bpfcc"] + list(BCC_RUNTIME_PACKAGES)
        packages += [p.format(llvm=bcc.llvm) for p in BCC_BUILD_PACKAGES]
    with Chroot(rootfs, logf) as ch:
        step("apt-get install in the chroot: kernel %s headers, %s, pytest, ..."
             % (release, "bcc's build dependencies" if bcc else "bcc"))
        ch.run("apt-get", "-q", "update")
        ch.run("apt-get", "-q", "-y", "dist-upgrade")
        ch.run("apt-get", "-q", "-y", "install", "linux-headers-%s=%s" % (release, resolved.kernel_version),
               *packages)
        installed = dict(line.split("\t", 1) for line in ch.output(
            "dpkg-query", "-W", "-f", "${Package}\t${Version}\n").splitlines())
        if bcc is not None:
            build_bcc(ch, rootfs, bcc, step)
            before = installed
            installed = dict(line.split("\t", 1) for line in ch.output(
                "dpkg-query", "-W", "-f", "${Package}\t${Version}\n").splitlines())
            build_only.update((p, v) for p, v in before.items() if p not in installed)
        step("apt-get download linux-image-%s" % release)
        ch.run("sh", "-c", "cd /var/tmp && apt-get -q download linux-image-%s=%s"
               % (release, resolved.kernel_version))
        debs = glob.glob(os.path.join(rootfs, "var/tmp", "linux-image-%s_*.deb" % release))
        if len(debs) != 1:
            raise BuildError("expected one linux-image-%s package, got %s" % (release, debs))
        ch.run("dpkg-deb", "-x", "/var/tmp/" + os.path.basename(debs[0]), "/var/tmp/kernel")
        kernel = os.path.join(rootfs, "var/tmp/kernel")
        if not os.path.isdir(os.path.join(kernel, "lib")):  # trixie packages ship usr/lib only
            os.symlink("usr/lib", os.path.join(kernel, "lib"))
        # modules.dep is made by the package's postinst, so make it for the unpacked copy.
        ch.run("depmod", "-b", "/var/tmp/kernel", release)
        drop_installed_kernel(rootfs, release)
        step("vmlinuz, config and modules %s" % ", ".join(MODULES))
        shutil.copy(os.path.join(kernel, "boot", "vmlinuz-" + release), os.path.join(work, "vmlinuz"))
        shutil.copy(os.path.join(kernel, "boot", "config-" + release), os.path.join(rootfs, "boot"))
        install_modules(kernel, rootfs, release)
        ch.run("depmod", release)
        link_headers(rootfs, release)
        remove_tree(kernel)
        os.remove(debs[0])
    for rel in TRIM:
        remove_tree(os.path.join(rootfs, rel))
    os.makedirs(os.path.join(rootfs, "var/log"), exist_ok=True)
    os.remove(os.path.join(rootfs, "etc/resolv.conf"))
    step("packing base.cpio")
    pack_cpio(rootfs, os.path.join(work, "base.cpio"), logf)
    remove_tree(rootfs)
    return installed


def bcc_source_into(rootfs: str, bcc: BccSource, root: str) -> str:
    """git archive of bcc at its commit (and libbpf at the submodule's) into ROOTFS/opt/src/bcc."""
    src = os.path.join(rootfs, "opt/src/bcc")
    os.makedirs(src)
    trees = [(git_repo("BPFTOOLS_LAB_BCC_GIT", "bcc.git", BCC_GIT_URL, root), bcc.commit, src)]
    if bcc.libbpf_commit:
        trees.append((git_repo("BPFTOOLS_LAB_LIBBPF_GIT", "libbpf.git", LIBBPF_GIT_URL, root),
                      bcc.libbpf_commit, os.path.join(src, "src/cc/libbpf")))
    for repo, commit, dest in trees:
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.Popen(["git", "-c", "safe.directory=*", "-C", repo, "archive", commit],
                                   stdout=subprocess.PIPE)
        tar = subprocess.call(["tar", "-x", "-C", dest], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait() != 0 or tar != 0:
            raise BuildError("cannot unpack %s of %s into %s" % (commit, repo, dest))
    for name, _ in bcc.patches:  # git apply outside a repository: a patch -p1 (minbase has no patch)
        run(["git", "apply", "-v", os.path.join(BCC_PATCH_DIR, name)], cwd=src,
            env=dict(os.environ, GIT_CEILING_DIRECTORIES=os.path.dirname(src)))  # no repo above src
    return "/opt/src/bcc"


def build_bcc(ch: "Chroot", rootfs: str, bcc: BccSource, step) -> None:
    """Configure, build and install bcc (libbcc.so, libbcc_bpf.so, the python3 module) in the chroot
    within BCC_BUILD_TIMEOUT_S, then purge the build packages and the source."""
    src = bcc_source_into(rootfs, bcc, cache_root())
    step("building bcc %s (%s, libbpf %s%s) with LLVM %s, at most %d s"
         % (bcc.tag, bcc.commit[:12], (bcc.libbpf_commit or "-")[:12],
            "".join(", + " + name for name, _ in bcc.patches), bcc.llvm, BCC_BUILD_TIMEOUT_S))
    # Only what the python3 module loads (libbcc.so.0) and libbcc_bpf.so: `make` of everything also
    # links the static libraries, the C++ tests and the examples against all of clang.
    script = " && ".join([
        "set -e", "mkdir -p %s/build" % src, "cd %s/build" % src,
        "cmake .. -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_BUILD_TYPE=Release -DREVISION=%s -DPYTHON_CMD=python3"
        " -DLLVM_DIR=/usr/lib/llvm-%s/lib/cmake/llvm" % (bcc.tag.lstrip("v"), bcc.llvm),
        "make -j$(nproc) bcc-shared bpf-shared bcc_py_python3",
        "cmake -DCOMPONENT=python -P src/python/cmake_install.cmake",
        "cp -a src/cc/libbcc.so* src/cc/libbcc_bpf.so* /usr/lib/x86_64-linux-gnu/",
        "ldconfig",
        "python3 -c 'import bcc, bcc.version; print(\"bcc\", bcc.version.__version__, bcc.__file__)'",
    ])
    try:
        ch.run("timeout", "-k", "30", str(BCC_BUILD_TIMEOUT_S), "nice", "-n", "19", "sh", "-c", script)
    except BuildError as e:
        if " exited 124" in str(e) or " exited 137" in str(e):
            raise BuildError("bcc %s: build timed out after %d s" % (bcc.tag, BCC_BUILD_TIMEOUT_S))
        raise BuildError("bcc %s: build failed: %s" % (bcc.tag, e))
    # What the in-VM check (lab/bcc_version_check.py) compares the importable bcc with.
    with open(os.path.join(rootfs, "etc/bpftools-lab-bcc.json"), "w") as f:
        json.dump(bcc._asdict(), f, sort_keys=True)
    step("purging bcc's build packages and source")
    build_only = [p.format(llvm=bcc.llvm) for p in BCC_BUILD_PACKAGES]
    ch.run("apt-get", "-q", "-y", "purge", "--auto-remove", *build_only)
    remove_tree(os.path.join(rootfs, "opt/src"))


def build_image(suite: str, resolved: Resolved, final: str) -> Image:
    """Build the image of SUITE into FINAL (via FINAL.tmp, renamed at the end)."""
    started = time.time()
    work = final + ".tmp"
    remove_tree(work)
    rootfs = os.path.join(work, "rootfs")
    os.makedirs(work)
    release = resolved.kernel_release
    log_path = os.path.join(work, "build.log")
    with open(log_path, "w") as logf:
        def step(msg: str) -> None:
            line = "[%5.0fs] %s" % (time.time() - started, msg)
            log(line)
            logf.write("### %s\n" % line)
            logf.flush()

        build_only = {}  # type: Dict[str, str]
        try:
            installed = _build_rootfs(suite, resolved, work, rootfs, logf, step, build_only)
        except BuildError as e:
            raise BuildError("%s (log: %s)" % (e, log_path))
        for pkg, want in resolved.versions.items():
            got = installed.get(pkg, build_only.get(pkg))
            if got != want:
                step("note: %s installed %s, resolved %s" % (pkg, got, want))
        manifest = {
            "suite": suite, "kernel_release": release, "kernel_version": resolved.kernel_version,
            "resolved": resolved.versions, "installed": installed, "modules": list(MODULES),
            "script_sha256": script_digest(), "built_at": time.time(),
            "build_seconds": round(time.time() - started, 1),
            "base_cpio_bytes": os.path.getsize(os.path.join(work, "base.cpio")),
        }
        if resolved.bcc is not None:
            manifest["bcc"] = dict(resolved.bcc._asdict(), build_packages=build_only)
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        step("done")
    remove_tree(final)
    os.rename(work, final)
    image = load_image(suite, final)
    assert image is not None
    return image


def drop_installed_kernel(rootfs: str, release: str) -> None:
    """Remove a kernel the headers pulled in (trixie's linux-headers-*-amd64 depends on the image):
    the VM boots the separate vmlinuz, and only MODULES belong in RAM."""
    for pattern in ("boot/vmlinuz*", "boot/initrd.img*", "boot/System.map*", "vmlinuz*", "initrd.img*"):
        for path in glob.glob(os.path.join(rootfs, pattern)):
            remove_tree(path)
    remove_tree(os.path.join(rootfs, "lib/modules", release))


def install_modules(kernel: str, rootfs: str, release: str) -> None:
    """Copy MODULES and their dependencies from the unpacked image package, plus depmod's inputs."""
    src = os.path.join(kernel, "lib/modules", release)
    dst = os.path.join(rootfs, "lib/modules", release)
    with open(os.path.join(src, "modules.dep")) as f:
        dep = f.read()
    with open(os.path.join(src, "modules.builtin")) as f:
        builtin = f.read().splitlines()
    for rel in module_closure(dep, list(MODULES), builtin):
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def link_headers(rootfs: str, release: str) -> None:
    """/lib/modules/VER/build -> the -amd64 headers and source -> the -common headers (bcc uses both)."""
    amd64 = "/usr/src/linux-headers-%s" % release
    common = amd64[:-len("-amd64")] + "-common"
    for path in (amd64, common):
        if not os.path.isdir(os.path.join(rootfs, path.lstrip("/"))):
            raise BuildError("headers directory %s missing from the root filesystem" % path)
    moddir = os.path.join(rootfs, "lib/modules", release)
    os.makedirs(moddir, exist_ok=True)
    for name, target in (("build", amd64), ("source", common)):
        link = os.path.join(moddir, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)


def pack_cpio(rootfs: str, out: str, logf) -> None:
    """An uncompressed newc archive of ROOTFS, in sorted order (the kernel unpacks it as initramfs)."""
    find = subprocess.Popen(["find", ".", "-mindepth", "1", "-print0"], cwd=rootfs, stdout=subprocess.PIPE)
    names = sorted(n for n in find.communicate()[0].split(b"\0") if n)
    with open(out, "wb") as f:
        proc = subprocess.Popen(["cpio", "--null", "--quiet", "-o", "-H", "newc"], cwd=rootfs,
                                stdin=subprocess.PIPE, stdout=f, stderr=logf)
        proc.communicate(b"\0".join(names) + b"\0")
    if proc.returncode != 0:
        raise BuildError("cpio exited %d" % proc.returncode)


def prune(suite: str, root: str, keep: str) -> None:
    """Remove older images of SUITE and leftovers of killed builds (call it holding the suite lock)."""
    for path in image_dirs(suite, root):
        if os.path.realpath(path) != os.path.realpath(keep):
            log("removing old image %s" % path)
            remove_tree(path)


def ensure(suite: str, force: bool = False, offline: bool = False, bcc: Optional[str] = None) -> Image:
    """The image of SUITE (with bcc built from tag BCC instead of the suite's python3-bpfcc): from the
    cache when its inputs are unchanged, else built now."""
    if suite not in SUITES:
        raise BuildError("unknown suite %r (one of: %s)" % (suite, ", ".join(sorted(SUITES))))
    if bcc is not None and suite not in BCC_SUITES:
        raise BuildError("--bcc is supported on %s only" % ", ".join(sorted(BCC_SUITES)))
    name = image_name(suite, bcc)
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    offline = offline or os.environ.get("BPFTOOLS_LAB_OFFLINE") == "1"
    resolved = None
    if not offline:
        try:
            resolved = resolve(suite, root, bcc)
        except BuildError as e:
            log("cannot ask the archive%s (%s); looking for a cached image"
                % (" or bcc's git" if bcc else "", e))
    if resolved is None:
        image = newest_cached(name, root)
        if image is None:
            raise BuildError("no cached %s image and the archive cannot be reached" % name)
        log("offline: using %s" % image.path)
        return image
    final = os.path.join(root, "%s-%s" % (name, cache_key(suite, resolved)))
    image = None if force else load_image(name, final)
    if image is not None:
        return image
    check_host()
    with suite_lock(root, name):
        image = None if force else load_image(name, final)  # built meanwhile by another process
        if image is None:
            log("building %s image: kernel %s (%s) -> %s" % (name, resolved.kernel_release,
                                                             resolved.kernel_version, final))
            image = build_image(suite, resolved, final)
            prune(name, root, final)
    return image


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has the image")
    parser.add_argument("--offline", action="store_true", help="do not ask the archive; use the newest cached image")
    parser.add_argument("--bcc", metavar="TAG", help="build bcc from this release tag (e.g. v0.10.0) instead of "
                                                   "installing the suite's python3-bpfcc (bullseye only)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        image = ensure(args.suite, force=args.force, offline=args.offline, bcc=args.bcc)
    except (BuildError, OSError) as e:
        log("error: %s" % e)
        return 1
    log("%s: kernel %s, %.1f s" % (args.suite, image.kernel_release, time.time() - started))
    print(image.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
