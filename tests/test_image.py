"""The container image (image/build.py) run by podman on this machine, as a node would run it.

- `bpftools-npd` (NPD's plugin) in the image: the protocol's exit codes and line, on a corpus log and
  on the live kernel log; a broken install is unknown (2), never a node problem (1);
- `podman kube play` of a Pod made from deploy/watch-daemonset.yaml's template (same privileges,
  mounts, env and args; the bundle hostPath moved to a temporary directory, tracepoint mode and JSON
  lines added): watch sees a real memory.kmem.limit_in_bytes write on the host, with the writer's
  pid; it serves /metrics on the pod's IP; SIGUSR1 makes it write a bundle that the test reads from
  the hostPath; a real Prometheus (Debian's, on loopback, its own config and storage) scrapes it, and
  a PromQL query through its HTTP API returns the bundle counter that trigger raised.

Needs root, buildah, podman, runc and prometheus (scripts/test installs them); the first build of
the image takes a few minutes, then it is cached.
"""
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from incident1_workloads import write_kmem_limit

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus", "dmesg"))


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("missing %s (scripts/test installs them)" % ", ".join(missing))


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory):
    """podman's settings for this machine: runc (crun refuses a cgroup v1 hierarchy with controllers on
    v2 as well) and default ulimits no higher than ours (podman's defaults exceed what we may set)."""
    _need("podman", "buildah", "runc")
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=%d:%d", "nproc=%d:%d"]\n[engine]\nruntime = "runc"\n'
                    % (nofile, nofile, nproc, nproc))
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def image(podman_env):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "image", "build.py")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    sys.stderr.write("image/build.py: %s in %.1f s\n" % (proc.stdout.strip(), time.monotonic() - start))
    return proc.stdout.strip()


def podman(env, *args, **kw):
    return subprocess.run(["podman"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env, timeout=kw.pop("timeout", 120), **kw)


def npd_plugin(env, image, *args, **kw):
    """`bpftools-npd ARGS` in a privileged container (as NPD's container runs it): (code, stdout, seconds)."""
    start = time.monotonic()
    proc = podman(env, "run", "--rm", "--privileged", "--pid=host", "--entrypoint", "/usr/local/bin/bpftools-npd",
                  *(kw.get("options", [])), image, *args)
    return proc.returncode, proc.stdout, time.monotonic() - start


def test_image_has_the_project_bcc_and_the_plugin(podman_env, image):
    proc = podman(podman_env, "run", "--rm", "--entrypoint", "python3", image, "-c",
                  "import bcc, bpftools, shutil; print(bpftools.__version__, shutil.which('bpftools'), "
                  "shutil.which('bpftools-npd'), shutil.which('ip'), shutil.which('modprobe'))")
    assert proc.returncode == 0, proc.stderr
    version = subprocess.check_output([sys.executable, "-c", "import bpftools; print(bpftools.__version__)"],
                                      universal_newlines=True).strip()
    assert proc.stdout.split() == [version, "/usr/local/bin/bpftools", "/usr/local/bin/bpftools-npd",
                                   "/usr/sbin/ip", "/usr/sbin/modprobe"]
    assert image == "localhost/bpftools:%s" % version
    proc = podman(podman_env, "run", "--rm", image, "--version")
    assert proc.stdout == "bpftools, version %s\n" % version, proc.stderr


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="corpus not found")
def test_npd_plugin_in_the_image_on_a_corpus_log(podman_env, image):
    mount = ["-v", "%s:/corpus:ro" % CORPUS]
    code, out, _ = npd_plugin(podman_env, image, "kmem", "--log", "/corpus/A02_k8s_82534.log", options=mount)
    assert (code, out) == (1, "detected: 3 SLUB allocation failure(s) (mnt_cache x1, blkdev_ioc x1, kmalloc-...\n")
    code, out, _ = npd_plugin(podman_env, image, "netdev", "--log", "/corpus/A02_k8s_82534.log", options=mount)
    assert (code, out) == (0, "clear: no sign in the log and no known precondition\n")
    code, out, _ = npd_plugin(podman_env, image, "netdev", "--log", "/corpus/missing.log", options=mount)
    assert (code, out) == (2, "unknown: cannot read log /corpus/missing.log: No such file or directory\n")


def _live_status(incident):
    doctor = subprocess.run([sys.executable, "-m", "bpftools.cli", "doctor", "--json"], stdout=subprocess.PIPE,
                            timeout=60)
    return {v["incident"]: v["status"] for v in json.loads(doctor.stdout.decode())["verdicts"]}[incident]


def test_npd_plugin_in_the_image_on_the_live_log_within_npds_timeout(podman_env, image):
    """As deploy/npd/npd-daemonset.yaml runs it (the node's / at /host): the answer agrees with doctor's
    on the host (before or after it: the kernel log may change meanwhile)."""
    host = ["-v", "/:/host:ro", "-e", "BPFTOOLS_HOST_ROOT=/host"]
    for condition, incident in (("kmem", "kmem_io_jitter"), ("netdev", "netdev_refcount_leak")):
        before = _live_status(incident)
        code, out, seconds = npd_plugin(podman_env, image, condition, options=host)
        after = _live_status(incident)
        line = out.rstrip("\n")
        assert out == line + "\n" and 0 < len(line.encode()) <= 80
        expected = {"detected": 1, "clear": 0, "unknown": 2, "at-risk": 1 if condition == "kmem" else 0}
        assert code in (expected[before], expected[after]), (condition, before, after, out)
        assert line.split(":")[0] in (before, after) or line.startswith("no sign in the log; at risk: ")
        # podman's own start and stop included: the plugin itself has less than this to answer in
        assert seconds < 5.0, seconds

def test_npd_plugin_maps_a_broken_install_to_unknown(podman_env, image, tmp_path):
    """A bpftools that dies at import (Python exits 1, as for a problem) is unknown to NPD."""
    broken = tmp_path / "broken" / "bpftools"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this install is broken')\n")
    code, out, _ = npd_plugin(podman_env, image, "kmem",
                              options=["-v", "%s:/broken:ro" % broken.parent, "-e", "PYTHONPATH=/broken"])
    assert (code, out) == (2, "unknown: bpftools doctor --npd exited 1 (its stderr is in NPD's log)\n")


def test_entrypoint_links_the_nodes_headers_from_host_else_its_own(podman_env, image):
    release = os.uname().release
    build = "/lib/modules/%s/build" % release
    show = ["--entrypoint", "sh", image, "-c", "bpftools-entrypoint --version >/dev/null && readlink %s" % build]
    if os.path.islink(build) and os.readlink(build).startswith("/"):
        proc = podman(podman_env, "run", "--rm", "-v", "/:/host:ro", *show)
        assert proc.stdout == "/host%s\n" % os.readlink(build), proc.stderr
    proc = podman(podman_env, "run", "--rm", *show)
    own = podman(podman_env, "run", "--rm", "--entrypoint", "sh", image, "-c", "ls -d /usr/src/linux-headers-*-amd64")
    assert proc.stdout == own.stdout and own.stdout.startswith("/usr/src/linux-headers-"), (proc.stdout, own.stdout)


def test_kubectl_debug_recipe_runs_a_live_tool(podman_env, image):
    """deploy/README.md's recipe as `kubectl debug node/NAME --profile=sysadmin` runs it: privileged, the
    node's pid and network namespaces, its / at /host, the command replacing the entrypoint."""
    proc = podman(podman_env, "run", "--rm", "--privileged", "--pid=host", "--net=host", "-v", "/:/host:ro",
                  "--entrypoint", "bpftools-entrypoint", image, "--host-root", "/host", "slabfail", "-d", "2",
                  timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "slabfail: tracepoint mode" in proc.stderr
    assert proc.stdout.split()[:6] == ["TIME(s)", "PID", "COMM", "CACHE", "CALLER", "GFP"]


# ---- watch in a Pod made from the DaemonSet ----

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_from_daemonset(image, name, state):
    """The DaemonSet's pod template as a Pod: the same spec, with the test's image, the hostPath of
    /var/lib/bpftools in STATE, and watch in tracepoint mode with JSON lines and a 1 s window after a trigger."""
    with open(os.path.join(ROOT, "deploy", "watch-daemonset.yaml")) as f:
        ds = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet")
    template = ds["spec"]["template"]
    spec = template["spec"]
    (ctr,) = spec["containers"]
    ctr["image"] = image
    ctr["args"] = ctr["args"] + ["--mode", "tracepoint", "--json", "--after", "1", "--ready-file",
                                 "/var/lib/bpftools/ready"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "bundles"]
    vol["hostPath"]["path"] = str(state)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"],
                                                            "annotations": template["metadata"]["annotations"]},
            "spec": spec}


class PodWatch(object):
    """`podman kube play` of the Pod; its container's JSON lines read from `podman logs`."""

    def __init__(self, env, pod, path):
        self.env, self.name = env, pod["metadata"]["name"]
        self.ctr = "%s-%s" % (self.name, pod["spec"]["containers"][0]["name"])
        self.path = str(path)
        with open(self.path, "w") as f:
            yaml.safe_dump(pod, f)
        proc = podman(env, "kube", "play", self.path, timeout=300)
        assert proc.returncode == 0, proc.stderr + proc.stdout

    def logs(self):
        proc = podman(self.env, "logs", self.ctr)
        return proc.stdout, proc.stderr

    def objects(self):
        return [json.loads(line) for line in self.logs()[0].splitlines() if line.startswith("{")]

    def wait_until(self, done, timeout):
        """DONE()'s first true value, while the container runs, within TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = done()
            if found:
                return found
            state = podman(self.env, "inspect", "--format", "{{.State.Status}}", self.ctr).stdout.strip()
            if state not in ("running", "created", "configured"):
                break
            time.sleep(0.5)
        out, err = self.logs()
        pytest.fail("nothing came in %d s (container %s)\n%s\n%s" % (timeout, state, out[-2000:], err[-3000:]))

    def wait_for(self, predicate, timeout):
        """The first JSON line of watch that PREDICATE accepts."""
        return self.wait_until(lambda: next((o for o in self.objects() if predicate(o)), None), timeout)

    def ip(self):
        out = podman(self.env, "inspect", "--format", "{{json .NetworkSettings.Networks}}", self.ctr).stdout
        return [n["IPAddress"] for n in json.loads(out).values() if n.get("IPAddress")][0]

    def down(self):
        podman(self.env, "kube", "down", self.path, timeout=120)


class Prometheus(object):
    """Debian's prometheus on loopback with its own config and storage (not the package's service)."""

    def __init__(self, tmp_path, target):
        self.port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                          "  - job_name: bpftools-watch\n    static_configs:\n      - targets: ['%s']\n" % target)
        self.log = open(str(tmp_path / "prometheus.log"), "w")
        self.proc = subprocess.Popen(["prometheus", "--config.file=%s" % config,
                                      "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                                      "--web.listen-address=127.0.0.1:%d" % self.port],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, promql):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read().decode())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_value(self, promql, value, timeout=60):
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            try:
                result = self.query(promql)
            except OSError:
                result = None
            if result and result[0]["value"][1] == value:
                return result[0]
            time.sleep(0.5)
        pytest.fail("%s never returned %s: %s\n%s" % (promql, value, result, open(self.log.name).read()[-2000:]))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def test_watch_pod_from_the_daemonset_sees_a_host_kmem_write_and_prometheus_scrapes_it(
        podman_env, image, tmp_path, cgroup_dir):
    _need("prometheus")
    state = tmp_path / "var-lib-bpftools"         # the DaemonSet's hostPath /var/lib/bpftools
    state.mkdir()
    bundles = state / "bundles"                    # watch's default --bundle-dir under it
    name = "bpftools-watch-test-%d" % os.getpid()
    pod = PodWatch(podman_env, pod_from_daemonset(image, name, state), tmp_path / "pod.yaml")
    prometheus = None
    try:
        started = time.monotonic()
        pod.wait_until(lambda: (state / "ready").exists(), timeout=240)
        attached = time.monotonic() - started
        writer = write_kmem_limit(cgroup_dir)
        path = cgroup_dir + "/memory.kmem.limit_in_bytes"
        seen = pod.wait_for(lambda o: o.get("type") == "kmem_file" and o.get("tgid") == writer, timeout=30)
        assert (seen["op"], seen["value"], seen["path"], seen["comm"]) == ("write", "1", path, "kmemwriter")

        target = "%s:9862" % pod.ip()
        with urllib.request.urlopen("http://%s/metrics" % target, timeout=10) as answer:
            text = answer.read().decode()
        assert "bpftools_up 1" in text and "bpftools_bundles_written_total 0" in text
        prometheus = Prometheus(tmp_path, target)
        prometheus.wait_value('up{job="bpftools-watch"}', "1")
        prometheus.wait_value("bpftools_bundles_written_total", "0")

        assert podman(podman_env, "kill", "--signal", "USR1", pod.ctr).returncode == 0
        done = pod.wait_for(lambda o: o.get("type") == "bundle", timeout=120)
        sample = prometheus.wait_value("bpftools_bundles_written_total", "1")
        assert sample["metric"]["job"] == "bpftools-watch" and sample["metric"]["instance"] == target
    finally:
        if prometheus is not None:
            prometheus.stop()
        pod.down()
    sys.stderr.write("watch in the pod: attached in %.1f s\n" % attached)
    # the bundle, read from the hostPath on the host
    (bundle,) = os.listdir(str(bundles))
    assert done["path"] == "/var/lib/bpftools/bundles/" + bundle      # the same directory, seen in the pod
    summary = json.load(open(str(bundles / bundle / "bundle.json")))
    assert summary["triggers"][0]["what"] == "SIGUSR1: a bundle was asked for"
    events = [json.loads(line) for line in open(str(bundles / bundle / "recording.jsonl"))]
    (write,) = [e for e in events if e.get("type") == "kmem_file" and e.get("tgid") == writer]
    assert (write["path"], write["value"], write["comm"]) == (path, "1", "kmemwriter")
    assert os.path.isfile(str(bundles / bundle / "report.html"))
