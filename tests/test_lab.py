"""The kernel tier on real Debian kernels: boot each lab VM (lab/run.py) and check the in-VM pytest result.

The VM tests (marker ``lab``) are slow (a cold image build is 2-3 minutes a suite, a boot and the
tier 1-5 minutes), so they run only with ``BPFTOOLS_LAB=1`` (CI sets it); they need root and the
host packages listed in lab/README.md. The bcc-floor run (bullseye with bcc built from v0.10.0, the
last EL7 bcc) is opt-in on top: ``BPFTOOLS_LAB_BCC_FLOOR=1`` (its source comes from GitHub, which
CI's Debian-only lab does not otherwise need; see lab/README.md). The other tests here check the lab scripts' own logic
(cpio writer, module closure, file selection, console parsing) in milliseconds.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "lab", "run.py")
sys.path.insert(0, os.path.join(ROOT, "lab"))
import build as lab_build  # noqa: E402  (lab/ is a folder of scripts)
import run as lab_run  # noqa: E402

# Suite -> the kernel series it must boot (lab/build.py resolves the exact release).
SUITES = {"bullseye": "5.10.", "bookworm": "6.1.", "trixie": "6.12."}
# The tier's own tests, which pass on every lab kernel: test_mempool_probes (4) and
# test_symbol_attach (8). Other kernel-tier tests only add to it.
MIN_PASSED = 12
# One suite: a cold build (about 3 minutes) plus the boot and the tier, the three VMs sharing the host.
TIMEOUT_S = 3600
VM_TIMEOUT_S = 3300

COUNT_RE = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


def pytest_counts(summary: str) -> Dict[str, int]:
    """{"passed": 12, "failed": 0, ...} from pytest's closing line ("error" counted as "errors")."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, word in COUNT_RE.findall(summary):
        key = "errors" if word.startswith("error") else word
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def test_pytest_counts_reads_a_closing_line():
    assert pytest_counts("1 failed, 11 passed, 2 skipped, 1 error in 29.83s") == {
        "passed": 11, "failed": 1, "errors": 1, "skipped": 2}


def tier_args():
    """lab/run.py arguments: the VM's timeout (the three VMs share the host); the tier is tests/kernel."""
    return ["--timeout", str(VM_TIMEOUT_S)]


class LabRun(object):
    """One ``lab/run.py SUITE`` in the background, its console going to a file (no pipe to fill)."""

    def __init__(self, suite: str, out_dir: str) -> None:
        self.suite = suite
        self.log = os.path.join(out_dir, "lab-%s.out" % suite)
        self.started = time.time()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, RUN, suite] + tier_args(), stdout=f,
                                         stderr=subprocess.STDOUT, universal_newlines=True)

    def wait(self) -> str:
        """Wait for the VM (TIMEOUT_S at most); its whole console output."""
        try:
            self.proc.wait(timeout=max(1, TIMEOUT_S - (time.time() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with open(self.log) as f:
            return f.read()


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory):
    """All suites' VMs, started together: the tier waits on the wall clock (mempool timeouts, device
    unregister rounds) as much as it computes, so running them side by side saves time even on 2 cores."""
    if os.environ.get("BPFTOOLS_LAB") != "1":
        pytest.skip("boots QEMU VMs: set BPFTOOLS_LAB=1 (python3 lab/run.py SUITE runs one by hand)")
    out_dir = str(tmp_path_factory.mktemp("lab"))
    runs = dict((suite, LabRun(suite, out_dir)) for suite in sorted(SUITES))
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.mark.lab
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_kernel_tier_passes_in_the_vm(suite, lab_runs, capsys):
    run = lab_runs[suite]
    out = run.wait()
    wall = time.time() - run.started
    console = lab_run.ConsoleState()  # run.py echoes the VM's console: parse it the same way
    for line in out.splitlines():
        console.parse(line)
    counts = pytest_counts(console.summary or "")
    with capsys.disabled():
        sys.stdout.write("\nlab %-8s kernel %-22s %-40s exit %s, wall %.0f s\n" % (
            suite, console.kernel, console.summary, run.proc.returncode, wall))
    tail = "\n".join(out.splitlines()[-120:])
    assert console.kernel is not None and console.kernel.startswith(SUITES[suite]), tail
    assert run.proc.returncode == console.exit_code == 0, tail
    assert counts["failed"] == 0 and counts["errors"] == 0, tail
    assert counts["passed"] >= MIN_PASSED, tail


# The bcc floor in the lab: bullseye (5.10, LLVM 9) with bcc built from this tag, and the kernel-tier
# files with the kprobe tests of kmemsnoop, slabfail and mempoolwait (incident 1), refleak and the
# mempool probes, plus the check that the VM's bcc is the one built from the tag.
BCC_FLOOR_TAG = "v0.10.0"
BCC_FLOOR_FILES = ["lab/bcc_version_check.py", "tests/kernel/test_kmemsnoop_kprobe.py",
                   "tests/kernel/test_incident1_kprobes.py", "tests/kernel/test_mempool_probes.py",
                   "tests/kernel/test_refleak_kprobes.py"]


# The part of bcc v0.10.0's src/cc/export/helpers.h that the asm_inline backport's hunk sits in.
HELPERS_H_V0_10_0 = """R"********(
#ifndef __BPF_HELPERS_H
#define __BPF_HELPERS_H

/* Before bpf_helpers.h is included, uapi bpf.h has been
 * included, which references linux/types.h. This will bring
 * in asm_volatile_goto definition if permitted based on
 * compiler setup and kernel configs.
"""


@pytest.mark.lab
def test_kernel_tier_passes_with_bcc_built_from_the_floor_tag(tmp_path, capsys):
    if os.environ.get("BPFTOOLS_LAB_BCC_FLOOR") != "1":
        pytest.skip("builds bcc %s in a bullseye image: set BPFTOOLS_LAB_BCC_FLOOR=1 "
                    "(python3 lab/run.py bullseye --bcc %s runs it by hand)" % (BCC_FLOOR_TAG, BCC_FLOOR_TAG))
    log = str(tmp_path / "lab-bcc-floor.out")
    started = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, RUN, "bullseye", "--bcc", BCC_FLOOR_TAG, "--timeout", str(VM_TIMEOUT_S),
                               "--"] + BCC_FLOOR_FILES, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    with open(log) as f:
        out = f.read()
    console = lab_run.ConsoleState()
    for line in out.splitlines():
        console.parse(line)
    counts = pytest_counts(console.summary or "")
    with capsys.disabled():
        sys.stdout.write("\nlab bullseye+bcc %s kernel %s %s exit %s, wall %.0f s\n" % (
            BCC_FLOOR_TAG, console.kernel, console.summary, proc.returncode, time.time() - started))
    tail = "\n".join(out.splitlines()[-120:])
    assert console.kernel is not None and console.kernel.startswith(SUITES["bullseye"]), tail
    assert proc.returncode == console.exit_code == 0, tail
    assert counts["failed"] == 0 and counts["errors"] == 0, tail
    assert counts["passed"] >= 1, tail


def test_image_names_keep_bcc_images_apart_from_the_suites(tmp_path):
    assert lab_build.image_name("bullseye") == "bullseye"
    assert lab_build.image_name("bullseye", "v0.10.0") == "bullseye-bcc-v0.10.0"
    for name in ("bullseye-0123456789abcdef", "bullseye-0123456789abcdef.tmp",
                 "bullseye-bcc-v0.10.0-fedcba9876543210", "bookworm-0123456789abcdef", "bullseye-notakey"):
        (tmp_path / name).mkdir()
    root = str(tmp_path)
    assert [os.path.basename(p) for p in lab_build.image_dirs("bullseye", root)] == [
        "bullseye-0123456789abcdef", "bullseye-0123456789abcdef.tmp"]
    assert [os.path.basename(p) for p in lab_build.image_dirs("bullseye-bcc-v0.10.0", root)] == [
        "bullseye-bcc-v0.10.0-fedcba9876543210"]


def test_bcc_image_key_covers_the_commits_and_llvm_and_drops_python3_bpfcc():
    base = lab_build.Resolved("5.10.0-46-amd64", "5.10.262-1", {"python3": "3.9.2-3"})
    assert base.bcc is None
    source = lab_build.BccSource("v0.10.0", "a" * 40, "b" * 40, "9")
    key = lab_build.cache_key("bullseye", base._replace(bcc=source))
    assert key != lab_build.cache_key("bullseye", base)
    assert key != lab_build.cache_key("bullseye", base._replace(bcc=source._replace(libbpf_commit="c" * 40)))
    keyed = lab_build.keyed_packages("bullseye", "v0.10.0")
    assert "python3-bpfcc" not in keyed and {"llvm-9-dev", "libclang-9-dev", "clang-9"} <= set(keyed)
    assert lab_build.keyed_packages("bullseye", None) == list(lab_build.KEYED_PACKAGES)


def test_bcc_builds_only_on_bullseye_and_only_from_release_tags(tmp_path):
    with pytest.raises(lab_build.BuildError, match="bullseye only"):
        lab_build.resolve_bcc("bookworm", "v0.10.0", str(tmp_path))
    with pytest.raises(lab_build.BuildError, match="release tag"):
        lab_build.resolve_bcc("bullseye", "master", str(tmp_path))


def test_bcc_source_comes_from_the_tag_and_its_libbpf_submodule(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always"]
    libbpf, bcc = str(tmp_path / "libbpf"), str(tmp_path / "bcc")
    subprocess.check_call(git + ["init", "-q", libbpf])
    (tmp_path / "libbpf" / "bpf.c").write_text("int x;\n")
    subprocess.check_call(git + ["-C", libbpf, "add", "bpf.c"])
    subprocess.check_call(git + ["-C", libbpf, "commit", "-q", "-m", "l"])
    libbpf_commit = subprocess.check_output(git + ["-C", libbpf, "rev-parse", "HEAD"], universal_newlines=True).strip()
    subprocess.check_call(git + ["init", "-q", bcc])
    (tmp_path / "bcc" / "CMakeLists.txt").write_text("project(bcc)\n")
    (tmp_path / "bcc" / "src/cc/export").mkdir(parents=True)
    (tmp_path / "bcc" / "src/cc/export/helpers.h").write_text(HELPERS_H_V0_10_0)
    subprocess.check_call(git + ["-C", bcc, "add", "CMakeLists.txt", "src/cc/export/helpers.h"])
    subprocess.check_call(git + ["-C", bcc, "update-index", "--add", "--cacheinfo",
                                 "160000,%s,src/cc/libbpf" % libbpf_commit])
    subprocess.check_call(git + ["-C", bcc, "commit", "-q", "-m", "b"])
    subprocess.check_call(git + ["-C", bcc, "tag", "v0.10.0"])
    monkeypatch.setenv("BPFTOOLS_LAB_BCC_GIT", bcc)
    monkeypatch.setenv("BPFTOOLS_LAB_LIBBPF_GIT", libbpf)
    source = lab_build.resolve_bcc("bullseye", "v0.10.0", str(tmp_path / "cache"))
    assert (source.tag, source.libbpf_commit, source.llvm) == ("v0.10.0", libbpf_commit, "9")
    assert [name for name, digest in source.patches] == ["asm_inline-linux-5.4.patch"]  # helpers.h lacks it
    with pytest.raises(lab_build.BuildError, match="has no commit"):
        lab_build.resolve_bcc("bullseye", "v0.9.0", str(tmp_path / "cache"))
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    assert lab_build.bcc_source_into(str(rootfs), source, str(tmp_path / "cache")) == "/opt/src/bcc"
    assert (rootfs / "opt/src/bcc/CMakeLists.txt").read_text() == "project(bcc)\n"
    assert (rootfs / "opt/src/bcc/src/cc/libbpf/bpf.c").read_text() == "int x;\n"
    helpers = (rootfs / "opt/src/bcc/src/cc/export/helpers.h").read_text()
    assert "#ifdef asm_inline\n#undef asm_inline\n#define asm_inline asm\n#endif\n" in helpers


def test_bcc_backports_are_keyed_by_their_text():
    source = lab_build.BccSource("v0.10.0", "a" * 40, "b" * 40, "9")
    assert source.patches == ()
    base = lab_build.Resolved("5.10.0-46-amd64", "5.10.262-1", {}, source)
    patched = base._replace(bcc=source._replace(patches=(("asm_inline-linux-5.4.patch", "0" * 64),)))
    assert lab_build.cache_key("bullseye", base) != lab_build.cache_key("bullseye", patched)
    for name, _, _ in lab_build.BCC_BACKPORTS:
        assert os.path.isfile(os.path.join(lab_build.BCC_PATCH_DIR, name))


def test_console_logs_of_a_suite_are_pruned_apart_from_its_bcc_images(tmp_path):
    for name in ["bullseye-2026120%d-000000.log" % i for i in range(1, 5)] + [
            "bullseye-bcc-v0.10.0-20261201-000000.log"]:
        (tmp_path / name).write_text("")
    lab_run.prune_logs(str(tmp_path), "bullseye", keep=2)
    assert sorted(os.listdir(str(tmp_path))) == [
        "bullseye-20261203-000000.log", "bullseye-20261204-000000.log", "bullseye-bcc-v0.10.0-20261201-000000.log"]


MODULES_DEP = """kernel/drivers/block/loop.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/crypto/crc32c_generic.ko.xz:
"""


def test_module_closure_follows_dependencies_once():
    assert lab_build.module_closure(MODULES_DEP, ["ext4", "bridge", "crc32c-generic"], []) == [
        "kernel/crypto/crc32c_generic.ko.xz", "kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko",
        "kernel/net/llc/llc.ko"]


def test_module_closure_accepts_built_in_and_rejects_unknown_modules():
    assert lab_build.module_closure(MODULES_DEP, ["loop", "veth"], ["kernel/drivers/net/veth.ko"]) == [
        "kernel/drivers/block/loop.ko"]
    with pytest.raises(lab_build.BuildError, match="veth is neither a module nor built in"):
        lab_build.module_closure(MODULES_DEP, ["veth"], [])


def test_cache_key_changes_with_every_input():
    base = lab_build.Resolved("6.1.0-56-amd64", "6.1.192-2", {"python3-bpfcc": "0.26.0+ds-1"})
    key = lab_build.cache_key("bookworm", base)
    assert re.match(r"^[0-9a-f]{16}$", key)
    assert lab_build.cache_key("bookworm", base) == key
    assert lab_build.cache_key("trixie", base) != key
    assert lab_build.cache_key("bookworm", base._replace(kernel_version="6.1.192-3")) != key
    assert lab_build.cache_key("bookworm", base._replace(versions={"python3-bpfcc": "0.26.0+ds-2"})) != key


def test_sources_cover_the_suite_updates_and_security():
    assert lab_build.sources_lines("bullseye", None) == [
        "deb http://deb.debian.org/debian bullseye main",
        "deb http://deb.debian.org/debian bullseye-updates main",
        "deb http://deb.debian.org/debian-security bullseye-security main"]


def test_installed_layout_maps_probes_and_analyses_into_the_package():
    assert lab_run.installed_name("bpftools/cli.py") == "bpftools/cli.py"
    assert lab_run.installed_name("probes/iojitter.bpf.c") == "bpftools/probes/iojitter.bpf.c"
    assert lab_run.installed_name("analyses/gfp.py") == "bpftools/analyses/gfp.py"
    assert lab_run.installed_name("tests/test_lab.py") is None
    assert lab_run.installed_name("probesx/a.c") is None


def test_pytest_arguments_default_to_the_kernel_tier():
    assert lab_run.pytest_arguments([], ROOT) == ["tests/kernel"]
    assert lab_run.pytest_arguments(["-k", "mempool", "-x"], ROOT) == ["tests/kernel", "-k", "mempool", "-x"]
    named = ["tests/kernel/test_symbol_attach.py::test_resolution_matches_what_this_kernel_has", "-x"]
    assert lab_run.pytest_arguments(named, ROOT) == named


def test_project_files_are_tracked_and_untracked_without_venv_or_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = str(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", repo]
    subprocess.check_call(git[:1] + ["init", "-q", repo])
    for name, text in (("bpftools/a.py", "a"), ("probes/p.bpf.c", "p"), (".gitignore", "*.log\n"),
                       ("new.txt", "n"), ("gone.py", "g"), ("x.log", "l"), (".venv/lib/v.py", "v")):
        os.makedirs(os.path.dirname(os.path.join(repo, name)) or repo, exist_ok=True)
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    subprocess.check_call(git + ["add", "bpftools/a.py", "probes/p.bpf.c", ".gitignore", "gone.py"])
    subprocess.check_call(git + ["commit", "-q", "-m", "x"])
    os.remove(os.path.join(repo, "gone.py"))
    assert lab_run.project_files(repo) == [".gitignore", "bpftools/a.py", "new.txt", "probes/p.bpf.c"]


def test_project_cpio_holds_init_tree_installed_layout_and_arguments(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio")
    repo = tmp_path / "repo"
    for name in ("bpftools/__init__.py", "probes/p.bpf.c", "tests/kernel/test_x.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    archive = str(tmp_path / "project.cpio")
    count = lab_run.write_project_cpio(archive, str(repo), "bookworm", ["tests/kernel", "-k", "a b"],
                                       command="bpftools doctor --json > $BPFTOOLS_LAB_OUT/doctor.json", timeout=3300)
    assert count == 3
    out = tmp_path / "out"
    out.mkdir()
    with open(archive, "rb") as f:
        subprocess.check_call(["cpio", "-i", "-d", "--quiet"], stdin=f, cwd=str(out))
    assert (out / "opt/bpftools/probes/p.bpf.c").read_text() == "probes/p.bpf.c"
    assert (out / "opt/site/bpftools/probes/p.bpf.c").read_text() == "probes/p.bpf.c"
    assert (out / "opt/site/bpftools/__init__.py").read_text() == "bpftools/__init__.py"
    assert not (out / "opt/site/tests").exists()
    assert (out / "opt/bpftools-lab/pytest-args").read_text() == "tests/kernel\n-k\na b\n"
    assert (out / "opt/bpftools-lab/command").read_text() == "bpftools doctor --json > $BPFTOOLS_LAB_OUT/doctor.json\n"
    env = (out / "opt/bpftools-lab/env").read_text()
    assert "BPFTOOLS_LAB_SUITE=bookworm\n" in env and "BPFTOOLS_LAB_TIMEOUT=3300\n" in env
    with open(lab_run.INIT) as f:
        assert (out / "init").read_text() == f.read()
    assert os.stat(str(out / "init")).st_mode & 0o777 == 0o755
    assert os.path.getsize(archive) % 512 == 0


def test_console_parse_reads_kernel_summary_and_exit_code():
    console = lab_run.ConsoleState()
    for line in ("[    1.0] random 3 passed in 1s", "@@BPFTOOLS-LAB-KERNEL=6.1.0-56-amd64@@", "@@BPFTOOLS-LAB-BEGIN@@",
                 "....", "1 failed, 3 passed in 12.50s", "@@BPFTOOLS-LAB-EXIT=1@@"):
        console.parse(line)
    assert (console.kernel, console.summary, console.exit_code) == ("6.1.0-56-amd64", "1 failed, 3 passed", 1)
    assert not console.fatal.is_set()
    console.parse("[    2.5] Failed to execute /init (error -13)")
    assert console.fatal.is_set()


def test_console_carries_files_back_and_kernel_lines_inside_are_dropped(tmp_path):
    import base64
    payload = b'{"type": "sleep"}\n' * 40 + bytes(range(256))
    text = base64.encodebytes(payload).decode()
    lines = ["@@BPFTOOLS-LAB-BEGIN@@", "@@BPFTOOLS-LAB-FILE=6.1.0-56-amd64/iojitter.jsonl@@"]
    body = text.splitlines()
    lines += body[:3] + ["[  12.345678] loop0: detected capacity change"] + body[3:]
    lines += ["@@BPFTOOLS-LAB-FILE-END@@", "@@BPFTOOLS-LAB-FILE=../../etc/evil@@", "AAAA",
              "@@BPFTOOLS-LAB-FILE-END@@", "@@BPFTOOLS-LAB-EXIT=0@@"]
    console = lab_run.ConsoleState()
    for line in lines:
        console.parse(line)
    assert console.exit_code == 0
    assert console.files["6.1.0-56-amd64/iojitter.jsonl"] == payload
    written = lab_run.save_files(console.files, str(tmp_path / "out"))
    assert written == [str(tmp_path / "out" / "6.1.0-56-amd64" / "iojitter.jsonl")]
    assert (tmp_path / "out" / "6.1.0-56-amd64" / "iojitter.jsonl").read_bytes() == payload
    assert not (tmp_path / "etc").exists()
