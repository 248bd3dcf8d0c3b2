"""``bpftools repro netns-churn``: create and destroy network namespaces joined by veth pairs,
with traffic that makes the client's kernel create a PMTU route exception (fnhe) each round — the
churn behind "unregister_netdevice: waiting for DEV to become free".

Each round, everything lives in namespaces the run creates (no device in the caller's namespace,
no address outside them; addresses come from 198.18.0.0/15, the benchmarking range)::

    client ns                 router ns (ip_forward=1)                 server ns
    <dev>cr 198.18.0.2/24 --- <dev>rc 198.18.0.1/24
     mtu 1500                 <dev>rs 198.18.1.1/24 --- <dev>sr 198.18.1.2/24
                               mtu PMTU                  mtu PMTU

The client sends a UDP datagram of ``--payload`` bytes with DF set (``IP_MTU_DISCOVER`` =
``IP_PMTUDISC_DO``) to the server; the router cannot forward it over the PMTU link and answers
ICMP fragmentation-needed; the client's kernel records a next-hop exception (fnhe) with the new
MTU. The round checks it with ``ip -n <client> route get 198.18.1.2`` (``mtu <PMTU>``), and a
second DF send must then fail locally with EMSGSIZE. With ``--hold-route`` a connected UDP socket
keeps its cached route across the deletion of the router's client-facing veth (which takes the
client's device with it). Then the namespaces are deleted (``--teardown``).

All traffic comes from one long-lived worker process (its pid is printed at once, for a tracer's
``-p``); it enters a namespace with setns(2) for each operation and returns to its own
namespace afterwards, so it never keeps a deleted namespace alive.

Names (at most 15 characters, IFNAMSIZ): ``bpft-<owner pid in base 36>-<round, 2 base-36
digits><role>``; namespaces end in ``c``/``r``/``s``, devices in ``cr``/``rc``/``rs``/``sr``
(the namespace they sit in, then the one they face).
"""
import json
import os
import re
import select
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from dataclasses import dataclass

from ..analyses.kernel_log import find_incidents
from ..errors import BadInput, MissingKernelFeature
from ..kernel.netns import InNetns
from . import (ReproError, Signalled, Signals, command, describe_status, errno_name,
               find_tool, first_line, fork_child, kill_and_reap, kmsg_mark, kmsg_since, latency_stats,
               interrupted_error, owned_by_dead_run, reap, require_root, warn_cleanup_errors, write_ready_file)

PREFIX = "bpft-"
MAX_ROUNDS = 36 * 36 - 1  # two base-36 digits
NETNS_DIR = "/var/run/netns"  # iproute2's NETNS_RUN_DIR (a symlink to /run/netns on most systems)
CLIENT_ADDR, ROUTER_CLIENT_ADDR = "198.18.0.2", "198.18.0.1"
SERVER_ADDR, ROUTER_SERVER_ADDR = "198.18.1.2", "198.18.1.1"
PREFIX_LEN = 24
DISCARD_PORT = 9
CLIENT_MTU = 1500
MIN_PMTU = 552  # ip_rt_min_pmtu (net.ipv4.route.min_pmtu): lower values are clamped and locked
UDP_IP_HEADERS = 28
TEARDOWNS = ("client-first", "router-first")
MAX_DURATION = 3600.0
MAX_SETTLE = 120.0
MAX_START_DELAY = 300.0
EXCEPTION_WAIT = 2.0  # seconds to wait for the fnhe to show up, resending now and then
GONE_WAIT = 5.0  # seconds to wait for a deleted device to vanish from a namespace we can still see
WORKER_TIMEOUT = 10.0
# <linux/in.h>; the socket module lacks some of them on older Pythons.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IP_MTU = getattr(socket, "IP_MTU", 14)
_NETNS_NAME = re.compile(r"^bpft-([0-9a-z]{1,6})-([0-9a-z]{2})([crs])$")
_LINK = re.compile(r"^(\d+):\s+([^:@\s]+)(?:@\S+)?:\s+<[^>]*>.*?\bmtu\s+(\d+)")
_ROUTE_MTU = re.compile(r"\bmtu\s+(?:lock\s+)?(\d+)")


@dataclass
class NetnsChurnConfig:
    """What ``repro netns-churn`` runs; times in seconds."""

    count: int = 10
    duration: float = 25.0
    pmtu: int = 1280
    payload: int = 1400
    teardown: str = "client-first"
    hold_route: bool = False
    settle: float = 0.0
    start_delay: float = 0.0
    ready_file: Optional[str] = None


def validate(cfg: NetnsChurnConfig) -> None:
    """BadInput for values the run cannot honour."""
    if not 1 <= cfg.count <= MAX_ROUNDS:
        raise BadInput("--count must be 1..%d (round numbers are two base-36 digits), not %d"
                       % (MAX_ROUNDS, cfg.count))
    if not 0 < cfg.duration <= MAX_DURATION:
        raise BadInput("--duration must be > 0 and <= %d s" % MAX_DURATION)
    if not 1 <= cfg.payload <= CLIENT_MTU - UDP_IP_HEADERS:
        raise BadInput("--payload must be 1..%d bytes (it must leave the client's %d-byte link)"
                       % (CLIENT_MTU - UDP_IP_HEADERS, CLIENT_MTU))
    if not MIN_PMTU <= cfg.pmtu < cfg.payload + UDP_IP_HEADERS:
        raise BadInput("--pmtu must be %d..%d: at least the kernel's minimum PMTU (%d, below it the "
                       "exception is clamped) and below the %d-byte datagram (payload + 28), or no "
                       "exception is created" % (MIN_PMTU, cfg.payload + UDP_IP_HEADERS - 1, MIN_PMTU,
                                                 cfg.payload + UDP_IP_HEADERS))
    if cfg.teardown not in TEARDOWNS:
        raise BadInput("--teardown must be one of %s" % ", ".join(TEARDOWNS))
    if not 0 <= cfg.settle <= MAX_SETTLE:
        raise BadInput("--settle must be 0..%d s" % MAX_SETTLE)
    if not 0 <= cfg.start_delay <= MAX_START_DELAY:
        raise BadInput("--start-delay must be 0..%d s" % MAX_START_DELAY)


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

def base36(value: int, width: int = 1) -> str:
    """VALUE in base 36 (digits 0-9a-z), zero-padded to WIDTH."""
    digits = ""
    while value:
        value, rest = divmod(value, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
    return digits.rjust(width, "0")


@dataclass
class RoundNames:
    """Namespace and device names of one round."""

    client: str
    router: str
    server: str
    client_dev: str  # in client, facing the router
    router_client_dev: str  # in router, facing the client
    router_server_dev: str  # in router, facing the server
    server_dev: str  # in server, facing the router


def round_names(owner: int, round_no: int) -> RoundNames:
    """Names for round ROUND_NO (1-based) of the run owned by pid OWNER; all <= 15 characters."""
    stem = "%s%s-%s" % (PREFIX, base36(owner), base36(round_no, 2))
    names = RoundNames(stem + "c", stem + "r", stem + "s", stem + "cr", stem + "rc", stem + "rs", stem + "sr")
    longest = max(len(n) for n in vars(names).values())
    if longest > 15 or round_no > MAX_ROUNDS:
        raise BadInput("pid %d / round %d give names longer than 15 characters" % (owner, round_no))
    return names


def netns_owner(name: str) -> Optional[int]:
    """Owner pid of one of our namespace names (``bpft-<pid36>-<NN><c|r|s>``), else None."""
    m = _NETNS_NAME.match(name)
    return int(m.group(1), 36) if m else None


# ---------------------------------------------------------------------------------------------
# Parsing iproute2 output
# ---------------------------------------------------------------------------------------------

def parse_links(text: str) -> Dict[str, Dict[str, int]]:
    """``ip -o link show`` → {name: {"ifindex": N, "mtu": M}}."""
    links = {}
    for line in text.splitlines():
        m = _LINK.match(line.strip())
        if m:
            links[m.group(2)] = {"ifindex": int(m.group(1)), "mtu": int(m.group(3))}
    return links


def parse_route_mtu(text: str) -> Optional[int]:
    """The ``mtu N`` (or ``mtu lock N``) of an ``ip route get`` answer: the route exception's
    PMTU; None when the route carries no exception."""
    m = _ROUTE_MTU.search(text)
    return int(m.group(1)) if m else None


def parse_netns_list(text: str) -> List[str]:
    """``ip netns list`` → names (``name (id: N)`` lines on newer iproute2)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def classify_ip_error(argv: List[str], stderr: str) -> Optional[Exception]:
    """A MissingKernelFeature for the errors that mean the kernel lacks veth or network
    namespaces; None for other failures."""
    text = stderr.lower()
    if "type" in argv and "veth" in argv and ("unknown device type" in text or "not supported" in text
                                              or "operation not supported" in text):
        return MissingKernelFeature("veth devices (CONFIG_VETH): ip said %r" % first_line(stderr),
                                    fallback="modprobe veth")
    if len(argv) >= 3 and argv[1:3] == ["netns", "add"] and ("invalid argument" in text
                                                          or "not supported" in text):
        return MissingKernelFeature("network namespaces (CONFIG_NET_NS): ip said %r" % first_line(stderr))
    return None


# ---------------------------------------------------------------------------------------------
# The worker: the one process that sends the traffic
# ---------------------------------------------------------------------------------------------

def _df_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    return sock


def _os_result(call: Callable[[], Any]) -> Tuple[str, Any]:
    """("ok", value) or (errno name, None)."""
    try:
        return "ok", call()
    except OSError as err:
        return errno_name(err.errno or 0), None


def _worker_op(req: Dict[str, Any], home: int, state: Dict[str, Any]) -> Dict[str, Any]:
    op = req["op"]
    if op == "forward":
        with InNetns(os.path.join(NETNS_DIR, req["netns"]), home):
            path = "/proc/sys/net/ipv4/ip_forward"
            with open(path, "w") as f:
                f.write("1")
            with open(path) as f:
                return {"ip_forward": int(f.read().strip())}
    if op == "probe":
        with InNetns(os.path.join(NETNS_DIR, req["netns"]), home):
            sock = _df_socket()
            try:
                result, _ = _os_result(lambda: sock.sendto(b"\0" * req["payload"], (req["dst"], DISCARD_PORT)))
            finally:
                sock.close()
        return {"send": result}
    if op == "hold":
        with InNetns(os.path.join(NETNS_DIR, req["netns"]), home):
            sock = _df_socket()
            sock.connect((req["dst"], DISCARD_PORT))
        state["held"] = sock
        return {"ip_mtu": _os_result(lambda: sock.getsockopt(socket.IPPROTO_IP, IP_MTU))[1]}
    if op == "held_send":
        sock = state["held"]
        result, _ = _os_result(lambda: sock.send(b"\0" * req["payload"]))
        mtu_result, mtu = _os_result(lambda: sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
        return {"send": result, "ip_mtu": mtu if mtu_result == "ok" else mtu_result}
    if op == "release":
        held = state.pop("held", None)
        if held is not None:
            held.close()
        return {"closed": held is not None}
    raise ValueError("unknown op %r" % op)


def _worker_body(req_r: int, res_w: int) -> int:
    """The worker's loop: one JSON request per line in, one JSON answer per line out."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    state = {}  # type: Dict[str, Any]
    with os.fdopen(req_r, "r") as requests, os.fdopen(res_w, "w") as answers:
        for line in requests:
            req = json.loads(line)
            if req["op"] == "exit":
                break
            try:
                answer = _worker_op(req, home, state)
            except Exception as err:  # reported to the parent, which raises ReproError
                answer = {"error": "%s: %s" % (type(err).__name__, err)}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    return 0


class Worker(object):
    """The parent's handle on the traffic worker."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()

        def body() -> int:
            os.close(req_w)
            os.close(res_r)
            return _worker_body(req_r, res_w)

        self.pid = fork_child(body)
        os.close(req_r)
        os.close(res_w)
        self.req_w, self.res_r = req_w, res_r
        self.buffer = b""
        self.status = None  # type: Optional[int]

    def call(self, op: str, **args: Any) -> Dict[str, Any]:
        """Send one request and wait for its answer (ReproError on error, timeout or death)."""
        args["op"] = op
        data = (json.dumps(args) + "\n").encode()
        while data:
            data = data[os.write(self.req_w, data):]
        deadline = time.monotonic() + WORKER_TIMEOUT
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready = select.select([self.res_r], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise ReproError("traffic worker (pid %d) did not answer %r in %d s" % (self.pid, op, WORKER_TIMEOUT))
            chunk = os.read(self.res_r, 65536)
            if not chunk:
                raise ReproError("traffic worker (pid %d) died during %r" % (self.pid, op))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line.decode())
        if "error" in answer:
            raise ReproError("traffic worker %r failed: %s" % (op, answer["error"]))
        return answer

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within 2 s."""
        if self.status is not None:
            return
        try:
            os.write(self.req_w, b'{"op": "exit"}\n')
        except OSError:
            pass
        self.status = reap(self.pid, 2.0)
        if self.status is None:
            self.status = kill_and_reap([self.pid])[self.pid]
        for fd in (self.req_w, self.res_r):
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# iproute2
# ---------------------------------------------------------------------------------------------

class Ip(object):
    """Runs ``ip``; turns the failures that mean a missing kernel feature into that error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, *args: str) -> str:
        argv = [self.path] + list(args)
        code, out, err = command(argv)
        if code != 0:
            missing = classify_ip_error(argv, err)
            if missing is not None:
                raise missing
            raise ReproError("%s failed (exit %d): %s" % (" ".join(argv), code, first_line(err)))
        return out

    def links(self, netns: str) -> Dict[str, Dict[str, int]]:
        """Devices of NETNS: {name: {ifindex, mtu}}; {} when the namespace is gone."""
        code, out, _ = command([self.path, "-n", netns, "-o", "link", "show"])
        return parse_links(out) if code == 0 else {}

    def netns_list(self) -> List[str]:
        code, out, _ = command([self.path, "netns", "list"])
        return parse_netns_list(out) if code == 0 else []


def sweep(ip: Ip, owned: Callable[[int], bool]) -> Dict[str, List[str]]:
    """Delete every namespace of ours whose owner pid passes OWNED (their devices go with them)."""
    removed, errors = [], []  # type: List[str], List[str]
    for name in ip.netns_list():
        owner = netns_owner(name)
        if owner is None or not owned(owner):
            continue
        code, _, err = command([ip.path, "netns", "del", name])
        if code == 0:
            removed.append("deleted netns %s" % name)
        else:
            errors.append("cannot delete netns %s: %s" % (name, first_line(err)))
    return {"removed": removed, "errors": errors}


# ---------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------

def _wait_gone(ip: Ip, netns: str, devices: List[str], since: float) -> Dict[str, Optional[float]]:
    """Poll NETNS until DEVICES are gone: ms after SINCE each vanished (None: still there after
    GONE_WAIT s)."""
    gone = {}  # type: Dict[str, Optional[float]]
    deadline = since + GONE_WAIT
    while True:
        present = ip.links(netns)
        now = time.monotonic()
        for dev in devices:
            if dev not in gone and dev not in present:
                gone[dev] = round((now - since) * 1000.0, 1)
        if len(gone) == len(devices) or now >= deadline:
            break
        time.sleep(0.01)
    return {dev: gone.get(dev) for dev in devices}


def _setup(ip: Ip, worker: Worker, n: RoundNames, pmtu: int) -> Dict[str, Any]:
    for netns in (n.client, n.router, n.server):
        ip("netns", "add", netns)
    ip("-n", n.router, "link", "add", "name", n.router_client_dev, "mtu", str(CLIENT_MTU), "type", "veth",
       "peer", "name", n.client_dev, "mtu", str(CLIENT_MTU), "netns", n.client)
    ip("-n", n.router, "link", "add", "name", n.router_server_dev, "mtu", str(pmtu), "type", "veth",
       "peer", "name", n.server_dev, "mtu", str(pmtu), "netns", n.server)
    for netns, dev, addr in ((n.router, n.router_client_dev, ROUTER_CLIENT_ADDR),
                             (n.router, n.router_server_dev, ROUTER_SERVER_ADDR),
                             (n.client, n.client_dev, CLIENT_ADDR), (n.server, n.server_dev, SERVER_ADDR)):
        ip("-n", netns, "addr", "add", "%s/%d" % (addr, PREFIX_LEN), "dev", dev)
        ip("-n", netns, "link", "set", dev, "up")
    ip("-n", n.client, "route", "add", "default", "via", ROUTER_CLIENT_ADDR)
    ip("-n", n.server, "route", "add", "default", "via", ROUTER_SERVER_ADDR)
    forward = worker.call("forward", netns=n.router)["ip_forward"]
    devices = []
    for netns, dev, peer in ((n.client, n.client_dev, n.router_client_dev),
                             (n.router, n.router_client_dev, n.client_dev),
                             (n.router, n.router_server_dev, n.server_dev),
                             (n.server, n.server_dev, n.router_server_dev)):
        info = ip.links(netns).get(dev)
        if info is None:
            raise ReproError("device %s missing from netns %s after creation" % (dev, netns))
        devices.append({"name": dev, "netns": netns, "peer": peer, "ifindex": info["ifindex"],
                        "mtu": info["mtu"], "deleted_by": None, "gone_after_ms": None})
    return {"router_ip_forward": forward, "devices": devices}


def _traffic(ip: Ip, worker: Worker, n: RoundNames, payload: int) -> Dict[str, Any]:
    """DF datagrams from client to server until the client's route shows the exception."""
    started = time.monotonic()
    first = worker.call("probe", netns=n.client, dst=SERVER_ADDR, payload=payload)["send"]
    sends, mtu, route = 1, None, ""
    deadline = started + EXCEPTION_WAIT
    next_send = started + 0.2
    while True:
        route = ip("-n", n.client, "route", "get", SERVER_ADDR)
        mtu = parse_route_mtu(route)
        now = time.monotonic()
        if mtu is not None or now >= deadline:
            break
        if now >= next_send:  # ICMP lost or rate-limited: try again
            worker.call("probe", netns=n.client, dst=SERVER_ADDR, payload=payload)
            sends += 1
            next_send = now + 0.2
        time.sleep(0.005)
    waited = round((time.monotonic() - started) * 1000.0, 1)
    after = worker.call("probe", netns=n.client, dst=SERVER_ADDR, payload=payload)["send"]
    return {"pmtu_exceptions_seen": mtu, "route_get": " ".join(route.split()), "first_send": first,
            "df_sends": sends, "exception_wait_ms": waited, "send_after_exception": after}


def _mark_deleted(devices: List[Dict[str, Any]], names: List[str], how: str) -> None:
    for dev in devices:
        if dev["name"] in names and dev["deleted_by"] is None:
            dev["deleted_by"] = how


def _teardown(ip: Ip, n: RoundNames, devices: List[Dict[str, Any]], order: str) -> None:
    """Delete the namespaces in ORDER; for devices in a namespace still there, time their going."""
    by_ns = {}  # type: Dict[str, List[str]]
    for dev in devices:
        by_ns.setdefault(dev["netns"], []).append(dev["name"])
    peers = {dev["name"]: dev["peer"] for dev in devices}
    sequence = [n.client, n.router, n.server] if order == "client-first" else [n.router, n.client, n.server]
    deleted = []  # type: List[str]
    for netns in sequence:
        since = time.monotonic()
        ip("netns", "del", netns)
        deleted.append(netns)
        mine = [d for d in by_ns.get(netns, []) if not any(x["name"] == d and x["deleted_by"] for x in devices)]
        _mark_deleted(devices, mine, "netns %s deleted" % netns)
        orphans = [peers[d] for d in mine]
        for dev in mine:
            _mark_deleted(devices, [peers[dev]], "peer of %s (netns %s deleted)" % (dev, netns))
        for other in sequence:
            if other in deleted:
                continue
            visible = [d for d in orphans if d in by_ns.get(other, [])]
            if visible:
                for dev, ms in _wait_gone(ip, other, visible, since).items():
                    next(x for x in devices if x["name"] == dev)["gone_after_ms"] = ms


def _hold_route(ip: Ip, worker: Worker, n: RoundNames, devices: List[Dict[str, Any]],
                payload: int) -> Dict[str, Any]:
    """Connected socket in the client, then delete the router's client-facing veth (the client's
    device goes with it) while the socket still holds its cached route; then close it."""
    held = worker.call("hold", netns=n.client, dst=SERVER_ADDR)
    since = time.monotonic()
    ip("-n", n.router, "link", "del", n.router_client_dev)
    _mark_deleted(devices, [n.router_client_dev], "ip link del")
    _mark_deleted(devices, [n.client_dev], "peer of %s (ip link del)" % n.router_client_dev)
    gone = _wait_gone(ip, n.router, [n.router_client_dev], since)
    gone.update(_wait_gone(ip, n.client, [n.client_dev], since))
    for dev in devices:
        if dev["name"] in gone:
            dev["gone_after_ms"] = gone[dev["name"]]
    after = worker.call("held_send", payload=min(payload, 64))
    closed = worker.call("release")["closed"]
    return {"ip_mtu_before_delete": held["ip_mtu"], "deleted": n.router_client_dev,
            "send_after_delete": after["send"], "ip_mtu_after_delete": after["ip_mtu"], "closed": closed}


def _round(ip: Ip, worker: Worker, cfg: NetnsChurnConfig, owner: int, round_no: int,
           on_ready: Callable[[int, RoundNames], None]) -> Dict[str, Any]:
    n = round_names(owner, round_no)
    t0 = time.monotonic()
    setup = _setup(ip, worker, n, cfg.pmtu)
    on_ready(round_no, n)
    t1 = time.monotonic()
    traffic = _traffic(ip, worker, n, cfg.payload)
    held = _hold_route(ip, worker, n, setup["devices"], cfg.payload) if cfg.hold_route else None
    t2 = time.monotonic()
    _teardown(ip, n, setup["devices"], cfg.teardown)
    t3 = time.monotonic()
    record = {"round": round_no, "namespaces": {"client": n.client, "router": n.router, "server": n.server},
              "router_ip_forward": setup["router_ip_forward"], "devices": setup["devices"]}
    record.update(traffic)
    record.update({"held_route": held, "teardown": cfg.teardown,
                   "setup_ms": round((t1 - t0) * 1000.0, 1), "traffic_ms": round((t2 - t1) * 1000.0, 1),
                   "teardown_ms": round((t3 - t2) * 1000.0, 1), "seconds": round(t3 - t0, 3)})
    return record


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def _unregister_timeout() -> Tuple[int, str]:
    """Seconds before the kernel prints the first "waiting for DEV" line, and where that comes from."""
    path = "/proc/sys/net/core/netdev_unregister_timeout_secs"
    try:
        with open(path) as f:
            return int(f.read().strip()), path
    except (OSError, ValueError):
        return 10, "fixed 10 s (no %s on this kernel)" % path


def _unregister_waits(mark: Optional[int], error: Optional[str], ours: List[str]) -> Dict[str, Any]:
    """"waiting for DEV to become free" lines in the kernel log since MARK that name our devices."""
    timeout, source = _unregister_timeout()
    out = {"available": mark is not None, "error": error, "first_warning_after_s": timeout,
           "first_warning_source": source, "waits": []}  # type: Dict[str, Any]
    if mark is None:
        return out
    for finding in find_incidents(kmsg_since(mark)):
        if finding.kind != "netdev_unregister_wait":
            continue
        for dev in finding.facts["devices"]:
            if dev["name"] in ours:
                out["waits"].append({"device": dev["name"], "messages": dev["messages"],
                                     "max_usage_count": dev["max_usage_count"]})
    return out


def run_netns_churn(cfg: NetnsChurnConfig, say: Callable[[str], None]) -> Dict[str, Any]:
    """Run the rounds; the JSON-ready summary. SAY prints progress lines (the worker's pid first).
    Raises ReproInterrupted after cleaning up on SIGINT/SIGTERM."""
    require_root("bpftools repro netns-churn")
    validate(cfg)
    ip = Ip(find_tool("ip", "iproute2"))
    if not os.path.exists("/proc/self/ns/net"):
        raise MissingKernelFeature("network namespaces (CONFIG_NET_NS): no /proc/self/ns/net")
    me = os.getpid()
    summary = {"command": "netns-churn", "owner_pid": me, "pmtu": cfg.pmtu, "payload": cfg.payload,
               "teardown": cfg.teardown, "hold_route": cfg.hold_route, "rounds_requested": cfg.count,
               "rounds": []}  # type: Dict[str, Any]
    worker = None  # type: Optional[Worker]
    interrupted = None  # type: Optional[int]
    started = time.monotonic()
    signals = Signals()
    with signals:
        try:
            summary["leftovers_removed"] = sweep(ip, owned_by_dead_run)
            mark, log_error = kmsg_mark()
            worker = Worker()
            summary["worker_pid"] = worker.pid
            say("traffic worker: pid %d" % worker.pid)
            if cfg.start_delay:
                say("starting in %.1f s (attach tracers now: -p %d)" % (cfg.start_delay, worker.pid))
                time.sleep(cfg.start_delay)

            def on_ready(round_no: int, n: RoundNames) -> None:
                if round_no == 1:
                    write_ready_file(cfg.ready_file, {"owner_pid": me, "pids": [worker.pid], "round": 1,
                                                      "namespaces": [n.client, n.router, n.server]})

            began = time.monotonic()
            stopped_by = "count"
            for round_no in range(1, cfg.count + 1):
                if time.monotonic() - began >= cfg.duration:
                    stopped_by = "duration"
                    break
                record = _round(ip, worker, cfg, me, round_no, on_ready)
                summary["rounds"].append(record)
                say(_round_line(record))
            summary["stopped_by"] = stopped_by
            if cfg.settle:
                say("settling %.1f s before reading the kernel log" % cfg.settle)
                time.sleep(cfg.settle)
            ours = [d["name"] for r in summary["rounds"] for d in r["devices"]]
            summary["kernel_log"] = _unregister_waits(mark, log_error, ours)
            summary["seconds"] = round(time.monotonic() - began, 3)
        except Signalled as sig:
            interrupted = sig.signum
        finally:
            with signals.deferred():
                if worker is not None:
                    worker.stop()
                    summary["worker_exit"] = describe_status(worker.status)
                summary["cleanup"] = sweep(ip, lambda pid: pid == me)
                warn_cleanup_errors(summary["cleanup"]["errors"])
    interrupted = interrupted or (signals.received[0] if signals.received else None)
    if interrupted is not None:
        raise interrupted_error("repro netns-churn", interrupted, time.monotonic() - started, summary["cleanup"],
                                "%d of %d rounds done; namespaces of the unfinished round deleted: %d"
                                % (len(summary["rounds"]), cfg.count, len(summary["cleanup"]["removed"])))
    _totals(summary)
    return summary


def _totals(summary: Dict[str, Any]) -> None:
    rounds = summary["rounds"]
    devices = [d for r in rounds for d in r["devices"]]
    summary["rounds_completed"] = len(rounds)
    summary["devices_created"] = len(devices)
    summary["devices_deleted"] = sum(1 for d in devices if d["deleted_by"])
    summary["exceptions_seen"] = sum(1 for r in rounds if r["pmtu_exceptions_seen"] == summary["pmtu"])
    summary["rounds_without_exception"] = [r["round"] for r in rounds
                                           if r["pmtu_exceptions_seen"] != summary["pmtu"]]
    summary["round_seconds"] = latency_stats([r["seconds"] for r in rounds])


def _round_line(r: Dict[str, Any]) -> str:
    devs = " ".join("%s(%d)" % (d["name"], d["ifindex"]) for d in r["devices"])
    held = ""
    if r["held_route"]:
        held = "; held socket: mtu %s, send after delete %s" % (
            r["held_route"]["ip_mtu_before_delete"], r["held_route"]["send_after_delete"])
    return ("round %d: %s; exception mtu %s after %.1f ms, next DF send %s%s; %.3f s"
            % (r["round"], devs, r["pmtu_exceptions_seen"], r["exception_wait_ms"],
               r["send_after_exception"], held, r["seconds"]))


def render_text(summary: Dict[str, Any]) -> List[str]:
    """The summary as plain lines for a terminal (the per-round lines were printed as they ran)."""
    s = summary["round_seconds"]
    lines = ["netns-churn: %d of %d rounds (%s), pmtu %d, %d/%d rounds with the exception, "
             "%d devices created, %d deleted" % (
                 summary["rounds_completed"], summary["rounds_requested"], summary["stopped_by"],
                 summary["pmtu"], summary["exceptions_seen"], summary["rounds_completed"],
                 summary["devices_created"], summary["devices_deleted"])]
    lines.append("  round seconds: min %s median %s max %s" % (s["min"], s["median"], s["max"]))
    log = summary["kernel_log"]
    if not log["available"]:
        lines.append("  kernel log not readable: %s" % log["error"])
    elif log["waits"]:
        for wait in log["waits"]:
            lines.append("  unregister_netdevice waited for %s: %d messages, usage count up to %d" % (
                wait["device"], wait["messages"], wait["max_usage_count"]))
    else:
        lines.append("  no 'waiting for <dev> to become free' for our devices (the kernel prints the "
                     "first after %d s; use --settle to wait)" % log["first_warning_after_s"])
    cleanup = summary["cleanup"]
    if cleanup["errors"]:
        lines.append("  cleanup errors: %s" % "; ".join(cleanup["errors"]))
    return lines
