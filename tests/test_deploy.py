"""deploy/: the manifests pass Kubernetes' schemas (kubernetes-validate, strict), the watch DaemonSet has
what the README promises, and the NPD plugin monitor config holds what NPD's loader checks
(pkg/custompluginmonitor/types/config.go: plugin "custom", durations, rule timeouts within the global one,
a default condition for every permanent rule, a path that exists where NPD runs it)."""
import copy
import json
import os
import re
import subprocess

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate "
                                          "(scripts/test does)")
yaml = pytest.importorskip("yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
WATCH = os.path.join(DEPLOY, "watch-daemonset.yaml")
NPD_CONFIG = os.path.join(DEPLOY, "npd", "bpftools-plugin-monitor.json")
MANIFESTS = [WATCH, os.path.join(DEPLOY, "npd", "npd-daemonset.yaml")]
# Go's time.ParseDuration, for the forms a config uses.
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def seconds(duration):
    assert DURATION.match(duration), duration
    return sum(float(n) * UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|ms|s|m|h)", duration))


def watch_daemonset():
    return next(d for d in documents(WATCH) if d["kind"] == "DaemonSet")


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_manifests_pass_the_current_kubernetes_schema(path):
    version = kubernetes_validate.latest_version()
    kinds = []
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert "DaemonSet" in kinds


def test_the_validator_rejects_a_broken_daemonset():
    """The check above can fail: a wrong type and an unknown field are both refused."""
    version = kubernetes_validate.latest_version()
    broken = copy.deepcopy(watch_daemonset())
    broken["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = copy.deepcopy(watch_daemonset())
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_watch_daemonset_privileges_mounts_and_probes():
    pod = watch_daemonset()["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and "hostNetwork" not in pod
    (ctr,) = pod["containers"]
    assert ctr["securityContext"] == {"privileged": True}
    assert ctr["args"][0] == "watch" and "--metrics-addr=0.0.0.0:9862" in ctr["args"]
    assert ctr["ports"] == [{"name": "metrics", "containerPort": 9862, "protocol": "TCP"}]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert set(ctr["resources"]) == {"requests", "limits"}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: (volumes[m["name"]], m.get("readOnly", False)) for m in ctr["volumeMounts"]}
    assert mounts == {
        "/sys": ("/sys", True), "/sys/kernel/debug": ("/sys/kernel/debug", False),
        "/sys/kernel/tracing": ("/sys/kernel/tracing", False), "/sys/fs/cgroup": ("/sys/fs/cgroup", True),
        "/lib/modules": ("/lib/modules", True), "/usr/src": ("/usr/src", True),
        "/var/log/pods": ("/var/log/pods", True), "/dev/kmsg": ("/dev/kmsg", True), "/host": ("/", True),
        "/var/lib/bpftools": ("/var/lib/bpftools", False)}
    assert {"name": "BPFTOOLS_HOST_ROOT", "value": "/host"} in ctr["env"]


def test_npd_config_follows_npds_schema():
    with open(NPD_CONFIG) as f:
        config = json.load(f)
    assert set(config) <= {"plugin", "pluginConfig", "source", "conditions", "rules", "metricsReporting"}
    assert config["plugin"] == "custom" and config["source"]
    plugin = config["pluginConfig"]
    assert set(plugin) <= {"invoke_interval", "timeout", "max_output_length", "concurrency",
                           "enable_message_change_based_condition_update", "skip_initial_status"}
    assert plugin["max_output_length"] == 80 and isinstance(plugin["concurrency"], int)
    assert seconds(plugin["timeout"]) == 5.0 and seconds(plugin["invoke_interval"]) >= 30
    conditions = {c["type"]: c for c in config["conditions"]}
    assert sorted(conditions) == ["KmemIOJitter", "NetdevRefcountLeak"]
    for c in conditions.values():
        assert set(c) == {"type", "reason", "message"} and c["reason"] and c["message"]
    args = []
    for rule in config["rules"]:
        assert set(rule) <= {"type", "condition", "reason", "path", "args", "timeout", "invoke_interval"}
        assert rule["type"] == "permanent" and rule["condition"] in conditions
        assert rule["reason"] != conditions[rule["condition"]]["reason"]
        assert seconds(rule["timeout"]) <= seconds(plugin["timeout"])
        assert rule["path"] == "/usr/local/bin/bpftools-npd"     # image/build.py installs it (image/bpftools-npd)
        args.append(rule["args"])
    assert sorted(args) == [["kmem"], ["netdev"]]
    assert sorted(r["condition"] for r in config["rules"]) == sorted(conditions)


def test_npd_kustomization_names_the_files_it_needs():
    with open(os.path.join(DEPLOY, "npd", "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["bpftools-plugin-monitor.json"]
    for name in kustomization["resources"] + generator["files"]:
        assert os.path.isfile(os.path.join(DEPLOY, "npd", name))
    pod = next(d for d in documents(os.path.join(DEPLOY, "npd", "npd-daemonset.yaml"))
               if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    config = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config["configMap"]["name"] == generator["name"]
    (npd,) = pod["containers"]
    assert "--config.custom-plugin-monitor=/config/bpftools-plugin-monitor.json" in npd["command"]


def test_readme_recipes_name_every_live_tool_and_doctor():
    with open(os.path.join(DEPLOY, "README.md")) as f:
        readme = f.read()
    out = subprocess.run([os.path.join(ROOT, ".venv", "bin", "bpftools"), "--help"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    commands = re.findall(r"^  ([a-z]+)\s", out.split("Commands:")[1], re.M)
    for tool in set(commands) - {"report", "plan", "repro"}:
        assert re.search(r"^    kubectl debug node/NAME -it --profile=sysadmin --image=\$IMG -- "
                         r"bpftools-entrypoint --host-root /host %s\b" % tool, readme, re.M), tool
    assert "kubectl cp" in readme
