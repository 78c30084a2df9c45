"""The failover lab: builds the namespaces, runs moto, the VPC-router emulator, the backends and
two real nodes (HAProxy, the agent, keepalived, all from rendered node config documents),
injects faults, measures, and tears everything down by PID and by namespace name.

    with Lab(workdir, LabOptions(profile="fast")) as lab:
        result = lab.failover(lambda: lab.kill_haproxy("a"), survivor="b")

What runs on the nodes is what ships: `python -m haproxy_ha_runtime render|agent|ready` on the
node's document.  The lab adds only what AWS would be: the API (moto), the VPC router
(emulator.py), each instance's metadata service and the Auto Scaling and CloudFormation calls that
moto lacks (tests/support), the group's replacement of an instance (`replace`), and a client.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from haproxy_ha_runtime import config_lambda, document_keys, lifecycle, routes, runtime_info
from haproxy_ha_runtime.agent import HealthCheck
from haproxy_ha_runtime.config import PROFILES, SCHEMA_VERSION
from haproxy_ha_runtime.version import __version__
from tests.support import moto_server, releases
from tests.support.eni_release import EniRelease

from . import backend, cloud, observe, topology
from . import tls as lab_tls
from .observe import JsonLines, Record
from .topology import NODES, ROUTER, VIP

REPO = Path(__file__).resolve().parents[2]
MOTO_PORT = 5000
PROXY_PORT = 5001
HTTP_PORT = 80
STATS_PORT = 8404
PRIORITY = {"a": 150, "b": 100}
# Router rules that drop what the nodes and the client send to the API (see api_down), ahead of
# the local table (pref 50, see topology.build).
_API_DOWN_PREF = 20
MOTO_URL = f"http://{topology.API_IP}:{MOTO_PORT}"
PROXY_URL = f"http://{topology.API_IP}:{PROXY_PORT}"
# The reconciler Lambda: the real handler behind a stand-in for Lambda's Invoke API (moto's needs Docker).
LAMBDA_PORT = 5002
LAMBDA_URL = f"http://{topology.API_IP}:{LAMBDA_PORT}"
RECONCILER = "haproxy-ha-lab-reconcile"
# Auto Scaling's and CloudFormation's calls that moto lacks (tests/support/aws_stand_in.py).
AWS_PORT = 5003
AWS_URL = f"http://{topology.API_IP}:{AWS_PORT}"
# Each instance's metadata service, on the node's loopback (tests/support/imds_stand_in.py).
IMDS_PORT = 9254
LIFECYCLE_HOOK = "haproxy-ha-drain"
# Live config: each node's document in moto's S3, as the stack writes it, polled every second.
CONFIG_BUCKET = "haproxy-ha-lab-config"
CONFIG_POLL_S = 1.0
# What `config add listener` adds: a second HTTP listener on this port.
SECOND_PORT = 8081
# With backends by name (LabOptions.backends="dns"): a DNS server in the router namespace
# answers for this name, and `dns answers` changes its A records.
DNS_NAME = "app.lab.internal"
DNS_PORT = 53
STACK = "haproxy-ha-lab"
PAIR_NAME = "haproxy-ha-lab"
IN_SERVICE = "InService"


class LabError(RuntimeError):
    """The lab could not be built, or a wait ran out."""


THIS, PREVIOUS = "this", "previous"


@dataclass(frozen=True)
class LabOptions:
    profile: str = "fast"
    tables: int = 3
    preempt: bool = False
    poll_s: float = 0.02
    # Point the nodes at the fault proxy (in the router namespace) instead of moto itself.
    fault_proxy: bool = False
    # The emulator reads every table on every poll below this many tables; above it, every
    # tenth poll, so that polling does not swamp moto (the client's table is read every poll).
    full_poll_max_tables: int = 10
    # How long a node being terminated lets requests in flight finish (the drain_timeout prop).
    drain_timeout_s: float = 10.0
    # How long a terminated instance keeps its ENI ("ENI still in use", tests/support/eni_release.py).
    eni_release_s: float = 1.0
    # "ip": the listener's backends are be1 and be2 by address.  "dns": one backend by name
    # (DNS_NAME, answering be1 at first), which HAProxy resolves while it runs.
    backends: str = "ip"
    # A TLS listener on port 443 beside the plain one, its certificate a secret in moto's Secrets
    # Manager (tests/lab/tls.py; then `Lab.tls` has its URL, CA file and rotation).
    tls: bool = False
    # What serves the backends: "python" (tests/lab/backend.py, with GET /slow/MS) or "nginx" (the
    # same replies from nginx, for the data-plane benchmark, where they must not be the bottleneck).
    backend_server: str = "python"
    # CPUs (a taskset list such as "1") to pin the nodes' HAProxy, and nginx, to; "": any.
    haproxy_cpus: str = ""
    nginx_cpus: str = ""
    # Which release's runtime the nodes start on, and whose writer puts the first documents:
    # THIS (the checkout) or PREVIOUS (the newest in releases/index.json, from its own commit).
    release: str = "this"


@dataclass
class Failover:
    """One measured failover.  All times are wall-clock seconds; durations are from the fault."""

    scenario: str
    fault_ts: float
    survivor: str
    fault_to_route_s: float | None
    fault_to_client_s: float | None
    fault_to_master_s: float | None
    failed_requests: int
    answered: dict[str, int]
    route_moves: int
    agent_route_move: dict[str, Any] | None = None


def _wait(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


wait_until = _wait


def _pinned(cpus: str, cmd: list[str]) -> list[str]:
    """`cmd`, run on `cpus` only (taskset execs it, so the PID stays the command's); "": as is."""
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the PPID follows the state.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


class ClientRun:
    """One run of the client process in the client namespace: to the plain listener, or with
    `tls` to the TLS listener, verified against the lab CA."""

    def __init__(self, lab: Lab, interval_s: float, max_s: float, timeout_s: float, tls: bool = False) -> None:
        lab._client_runs += 1
        self.path = lab.workdir / f"client-{lab._client_runs}{'-https' if tls else ''}.jsonl"
        self.timeout_s = timeout_s
        self._log = JsonLines(self.path)
        if tls:
            if lab.tls is None:
                raise LabError("an HTTPS client needs a lab with a TLS listener (LabOptions(tls=True))")
            target = ["--url", lab.tls.url, "--cafile", str(lab.tls.cafile)]
        else:
            target = ["--url", f"http://{VIP}:{HTTP_PORT}/"]
        self.proc = lab._spawn(f"client-{lab._client_runs}", topology.CLIENT, [
            sys.executable, "-m", "tests.lab.client", *target,
            "--interval-s", str(interval_s), "--max-s", str(max_s), "--timeout-s", str(timeout_s),
            "--max-requests", str(int(max_s / interval_s) + 1), "--out", str(self.path)])

    def records(self) -> list[Record]:
        return self._log.records()

    def answered_by(self, node: str, after: float = 0.0) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("node") == node and r["done"] >= after and not r.get("error")]

    def stop(self) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.records()


class Lab:
    def __init__(self, workdir: Path, options: LabOptions | None = None) -> None:
        self.workdir = Path(workdir)
        self.options = options or LabOptions()
        # Every process the lab started, by name, restarts included; `named` has the latest.
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: contextlib.ExitStack | None = None
        self._client_runs = 0
        self._logs: dict[str, JsonLines] = {}
        self._api_down_rules: list[str] = []
        self.state: cloud.CloudState | None = None
        # Each node's instance now (a replacement changes it), and the ENIs' release after a
        # termination.
        self.instance: dict[str, str] = {}
        self.eni_release = EniRelease(self.options.eni_release_s)
        self._agent_started: dict[str, float] = {}
        # The listeners of both nodes' documents; config steps change them.
        by_name = [{"name": "app", "host": DNS_NAME, "port": 8080, "max_addresses": 4}]
        self.listeners: list[dict[str, Any]] = [{
            "name": "web", "port": HTTP_PORT, "mode": "http", "check_path": "/",
            "backends": by_name if self.options.backends == "dns" else [
                {"name": f"be{i + 1}", "host": ip, "port": 8080} for i, ip in enumerate(topology.BACKEND_IPS[:2])]}]
        # The TLS listener's certificates and secret, made at start (None without options.tls).
        self.tls: lab_tls.LabTls | None = None
        if self.options.tls:
            self.tls = lab_tls.LabTls(self.workdir / "tls", VIP, MOTO_URL, cloud.REGION)
            self.listeners.append(lab_tls.listener(self.listeners[0]["backends"]))
        # The ETag of each node's documents, key by key, as the last deploy wrote them to S3, and
        # whose writer that was (THIS or PREVIOUS).
        self.documents: dict[str, dict[str, str]] = {}
        self.writer = self.options.release
        # Which release each node's instance runs (a replacement may change it).
        self.runtime: dict[str, str] = {n: self.options.release for n in NODES}
        self._s3: Any = None
        self._api: Any = None
        self.env = dict(os.environ)
        for key in [k for k in self.env if k.startswith("AWS_")]:
            del self.env[key]
        self.env.update(moto_server.NO_DEFAULT_AMIS)
        self.env.update({
            "AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab", "AWS_DEFAULT_REGION": cloud.REGION,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            # The agents invoke the reconciler for a missing route; their Lambda client goes here.
            "AWS_ENDPOINT_URL_LAMBDA": LAMBDA_URL,
            # The nodes read their documents from S3 (moto) and write their status there, and
            # read the TLS listener's secret from Secrets Manager (moto).
            "AWS_ENDPOINT_URL_S3": MOTO_URL, "AWS_ENDPOINT_URL_SECRETS_MANAGER": MOTO_URL,
            # Lifecycle hooks, instance health and CloudFormation signals go to the stand-in; the
            # instance metadata to the stand-in on the node's own loopback.
            "AWS_ENDPOINT_URL_AUTO_SCALING": AWS_URL, "AWS_ENDPOINT_URL_CLOUDFORMATION": AWS_URL,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{IMDS_PORT}",
            # Any other service a node might call goes nowhere (the discard port), never to AWS.
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        })

    # -- processes -------------------------------------------------------------------------
    def _runtime(self, node: str) -> tuple[Path, dict[str, str]]:
        """Where node's runtime commands run, and their environment: the checkout's, or the
        previous release's own tree (`python -m` puts the working folder first on the path)."""
        if self.runtime[node] == THIS:
            return REPO, self.env
        release = releases.previous_release()
        return releases.release_tree(release), releases.release_env(release, self.env)

    def _run_runtime(self, node: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        """`python -m haproxy_ha_runtime ARGS` on node, with the release its instance runs."""
        cwd, env = self._runtime(node)
        return subprocess.run(["ip", "netns", "exec", NODES[node].namespace, sys.executable, "-m",
                               "haproxy_ha_runtime", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout_s)

    def _spawn(self, name: str, namespace: str, cmd: list[str], log_name: str | None = None,
               stderr_name: str | None = None, env: dict[str, str] | None = None,
               cwd: Path = REPO, base_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out_path = self.workdir / (log_name or f"{name}.log")
        err_path = self.workdir / stderr_name if stderr_name else None
        # The child keeps its own copies of the log descriptors; ours close at once.
        with open(out_path, "ab") as out, open(err_path or os.devnull, "ab") as err:
            # `ip netns exec` execs the command, so the PID is the command's own.
            proc = subprocess.Popen(["ip", "netns", "exec", namespace, *cmd], stdout=out,
                                    stderr=err if err_path else subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, env={**(base_env or self.env), **(env or {})})
        self.started.append((name, proc))
        self.named[name] = proc
        return proc

    # -- building --------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        problems = self.stop()
        if problems and exc[0] is None:
            raise LabError("teardown left things behind: " + "; ".join(problems))

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(topology.exclusive_lab())
        leftovers = topology.remove_leftovers()
        if leftovers:
            print(f"lab: removed leftovers of an earlier run: {', '.join(leftovers)}", file=sys.stderr)
        topology.build()
        moto = self._spawn("moto", ROUTER, [str(Path(sys.executable).with_name("moto_server")),
                                            "-H", topology.API_IP, "-p", str(MOTO_PORT)])
        if self.options.backend_server == "nginx":
            folder = self.workdir / "nginx"
            folder.mkdir(exist_ok=True)
            (folder / "nginx.conf").write_text(backend.nginx_config(
                [(ip, 8080, f"be{i + 1}") for i, ip in enumerate(topology.BACKEND_IPS)], folder))
            self._spawn("backends", ROUTER, _pinned(self.options.nginx_cpus, backend.nginx_command(folder)))
        else:
            self._spawn("backends", ROUTER, [sys.executable, "-m", "tests.lab.backend"]
                        + [f"{ip}:8080=be{i + 1}" for i, ip in enumerate(topology.BACKEND_IPS)])
        if self.options.fault_proxy:
            self._spawn("fault-proxy", ROUTER, [sys.executable, "-m", "tests.support.fault_proxy",
                                                "--listen", f"{topology.API_IP}:{PROXY_PORT}",
                                                "--upstream", MOTO_URL])
        if self.options.backends == "dns":
            self.set_dns_answers(["be1"])
            self._spawn("dns", ROUTER, [
                "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
                f"--addn-hosts={self.workdir / 'dns-hosts'}", f"--listen-address={topology.API_IP}",
                "--bind-interfaces", f"--port={DNS_PORT}", "--local-ttl=1", "--no-negcache",
                f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-"], log_name="dnsmasq.log")
        self._spawn("aws-stand-in", ROUTER, [sys.executable, "-m", "tests.support.aws_stand_in", "--host",
                                             topology.API_IP, "--port", str(AWS_PORT), "--log",
                                             str(self.workdir / "aws-calls.jsonl")])
        _wait(lambda: self._reachable(MOTO_URL + "/moto-api/") or moto.poll() is not None, 30, "moto to start")
        if moto.poll() is not None:
            raise LabError(f"moto exited with {moto.returncode}; see {self.workdir / 'moto.log'}")
        # Dummy credentials of its own: the harness never signs with whatever the caller has.
        self._api = boto3.session.Session(aws_access_key_id="lab", aws_secret_access_key="lab").client(
            "ec2", region_name=cloud.REGION, endpoint_url=MOTO_URL)
        self._s3 = boto3.session.Session(aws_access_key_id="lab", aws_secret_access_key="lab").client(
            "s3", region_name=cloud.REGION, endpoint_url=MOTO_URL)
        with topology.entered(ROUTER):
            self.state = cloud.create(self._api, VIP, self.options.tables)
            self._s3.create_bucket(Bucket=CONFIG_BUCKET)
        if self.tls is not None:
            self.tls.create()  # before the first render, which fetches the secret
        self.instance = dict(self.state.instance)
        self._start_emulator()
        self._start_reconciler()
        for node in NODES:
            self._write_document(node)
        self.publish_documents()
        for n in NODES:
            render = self._run_runtime(n, ["render", "--config", str(self.document(n))], 30)
            if render.returncode != 0:
                raise LabError(f"render failed: {render.stdout}{render.stderr}")
        if self.options.fault_proxy:
            _wait(lambda: self._reachable(PROXY_URL + "/_stats"), 15, "the fault proxy to start")
        _wait(lambda: self._reachable(AWS_URL), 15, "the Auto Scaling and CloudFormation stand-in to start")
        for node in NODES:
            self.start_imds(node)
            self.start_haproxy(node)
            self.start_agent(node)
        # Node a first, alone, so that it wins the first election whatever the timing profile.
        self._wait_healthy("a")
        self.start_keepalived("a")
        self.wait_master("a", timeout_s=10 + 4 * self.timing_advert_s)
        self.wait_routes("a", timeout_s=15)
        self._wait_healthy("b")
        self.start_keepalived("b")
        _wait(lambda: self.vrrp_state("b") == "BACKUP", 10 + 4 * self.timing_advert_s, "node b to become BACKUP")

    @property
    def timing_advert_s(self) -> float:
        return PROFILES[self.options.profile].advert_int_s

    def _reachable(self, url: str) -> bool:
        with topology.entered(ROUTER):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return True
            except OSError:
                return False

    def _start_emulator(self) -> None:
        assert self.state is not None
        tables = self.state.route_table_ids
        full_every = 1 if len(tables) <= self.options.full_poll_max_tables else 10
        self._spawn("emulator", ROUTER, [
            sys.executable, "-m", "tests.lab.emulator", "--endpoint", MOTO_URL, "--vip", VIP,
            "--client-table", self.state.client_table, "--tables", ",".join(tables),
            "--poll-s", str(self.options.poll_s), "--full-every", str(full_every),
            *[a for n in NODES for a in ("--eni", f"{self.state.eni[n]}={NODES[n].ip}")]],
            log_name="emulator.jsonl", stderr_name="emulator.err")
        _wait(lambda: any(r.get("event") == "routes" for r in self.emulator_log()), 15, "the emulator's first poll")

    def _start_reconciler(self) -> None:
        assert self.state is not None
        state = self.state
        self._spawn("reconciler", ROUTER, [sys.executable, "-m", "tests.support.lambda_stand_in",
                                           "--host", topology.API_IP, "--port", str(LAMBDA_PORT)],
                    env={"VIP": VIP, "ROUTE_TABLE_IDS": ",".join(state.route_table_ids),
                         "NODES": json.dumps([{"name": n, "eni_id": state.eni[n]} for n in NODES]),
                         "AWS_ENDPOINT_URL": MOTO_URL})
        _wait(lambda: self._reachable(LAMBDA_URL + "/invocations"), 15, "the reconciler stand-in to start")

    def node_dir(self, node: str) -> Path:
        return self.workdir / node

    def document(self, node: str) -> Path:
        return self.node_dir(node) / "node.json"

    def document_key(self, node: str, release: str) -> str:
        """The key of node's document that `release`'s construct names (its user data, its document)."""
        schema = SCHEMA_VERSION if release == THIS else int(releases.previous_release()["schema"])
        return document_keys.document_key(node, schema)

    def document_for(self, node: str, release: str | None = None, **changes: Any) -> dict[str, Any]:
        """Node's document as `release`'s construct would write it (the current writer's by
        default), with `changes` on top."""
        assert self.state is not None
        release = release or self.writer
        d = self.node_dir(node)
        (d / "run").mkdir(parents=True, exist_ok=True)
        peer = "b" if node == "a" else "a"
        # This release adds `release` (schema 2); the previous one wrote schema 1.
        this = {"version": SCHEMA_VERSION, "release": __version__} if release == THIS else {"version": 1}
        doc = {
            **this,
            "node_name": node,
            "vip": VIP,
            "eni_id": self.state.eni[node],
            "local_ip": NODES[node].ip,
            "interface": topology.NODE_IFACE,
            "peers": [{"name": peer, "ip": NODES[peer].ip, "eni_id": self.state.eni[peer]}],
            "route_table_ids": self.state.route_table_ids,
            "region": cloud.REGION,
            "endpoint_url": PROXY_URL if self.options.fault_proxy else MOTO_URL,
            "vpc_id": self.state.vpc_id,
            "reconciler": RECONCILER,
            "priority": PRIORITY[node],
            "preempt": self.options.preempt,
            "profile": self.options.profile,
            "listeners": self.listeners,
            "stats_port": STATS_PORT,
            "auto_scaling_group": f"haproxy-ha-lab-node-{node}",
            "lifecycle_hook": LIFECYCLE_HOOK,
            "drain_timeout_s": self.options.drain_timeout_s,
            "cfn_stack": STACK,
            "cfn_resource": f"Node{node.upper()}Group",
            "config_bucket": CONFIG_BUCKET,
            "config_key": self.document_key(node, release),
            "status_key": f"nodes/{node}/status.json",
            "config_poll_s": CONFIG_POLL_S,
            "resolvers": [f"{topology.API_IP}:{DNS_PORT}"] if self.options.backends == "dns" else [],
            **({"tls_poll_s": lab_tls.POLL_S} if self.options.tls else {}),
            # The agents write metric records (logs/metrics.jsonl); nothing ships them here.
            "pair_name": PAIR_NAME,
            "paths": {"run_dir": str(d / "run"), "keepalived_conf": str(d / "keepalived.conf"),
                      "haproxy_conf": str(d / "haproxy.cfg"), "log_socket": str(d / "log.sock"),
                      "log_dir": str(d / "logs")},
        }
        doc.update(changes)
        return doc

    def _write_document(self, node: str) -> None:
        """The document boot leaves on the node (a new instance's disk gets the current one)."""
        (self.node_dir(node) / "run").mkdir(parents=True, exist_ok=True)
        doc = self.document_for(node, self.runtime[node])
        self.document(node).write_text(json.dumps(doc, indent=2) + "\n")

    def publish_documents(self, **changes: Any) -> dict[str, dict[str, str]]:
        """Write both nodes' documents to S3 as a deploy of the current writer's release does."""
        return self.deploy_documents(self.writer, **changes)

    def deploy_documents(self, release: str, **changes: Any) -> dict[str, dict[str, str]]:
        """Write both nodes' documents to S3 as `release`'s own documents resource does on a
        deploy (its on_event: this checkout's, or the previous release's from its commit);
        the ETags it wrote, node by node and key by key."""
        self.writer = release
        event = {"RequestType": "Update", "RequestId": f"lab-{time.time():.6f}", "StackId": STACK,
                 "LogicalResourceId": "Documents", "PhysicalResourceId": config_lambda.physical_id(CONFIG_BUCKET),
                 "ResourceProperties": {"Bucket": CONFIG_BUCKET, "WaitSeconds": "300", "Nodes": [
                     {"Name": node, "Key": self.document_key(node, release),
                      "StatusKey": f"nodes/{node}/status.json", "AutoScalingGroupName": f"haproxy-ha-lab-node-{node}",
                      "Document": json.dumps(self.document_for(node, release, **changes))} for node in NODES]}}
        if release == THIS:
            with topology.entered(ROUTER):
                data = config_lambda.write_documents(self._s3, event, time.time())["Data"]
        else:
            data = self._previous_writer(event)
        for node in NODES:
            keys = {self.document_key(node, release): data[config_lambda.version_key(node)]}
            if config_lambda.legacy_version_key(node) in data:
                keys[self.document_key(node, PREVIOUS)] = data[config_lambda.legacy_version_key(node)]
            self.documents[node] = keys
        return {n: dict(k) for n, k in self.documents.items()}

    def _previous_writer(self, event: dict[str, Any]) -> dict[str, str]:
        """The previous release's own on_event, in the router's namespace (where moto is)."""
        code = ("import json, os, sys\nfrom haproxy_ha_runtime import config_lambda\n"
                "print(json.dumps(config_lambda.on_event(json.load(sys.stdin), None)))")
        env = {**self.env, "AWS_ENDPOINT_URL": MOTO_URL, "AWS_REGION": cloud.REGION}
        proc = releases.run_release_python(releases.previous_release(), code, json.dumps(event), timeout=60,
                                           prefix=("ip", "netns", "exec", ROUTER), env=env)
        if proc.returncode != 0:
            raise LabError(f"the previous release's writer failed: {proc.stderr[-2000:]}")
        data: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])["Data"]
        return data

    def expected_document(self, node: str) -> tuple[str, str]:
        """The key and ETag node's status must report, for the release its instance runs: the
        newest document it reads among those the last deploy wrote."""
        written = self.documents[node]
        readable = [k for k in written if self.runtime[node] == THIS
                    or document_keys.schema_of(k) == int(releases.previous_release()["schema"])]
        if not readable:
            raise LabError(f"node {node} runs the {self.runtime[node]} release, and the last deploy wrote it "
                           f"nothing it reads ({', '.join(written)})")
        key = max(readable, key=lambda k: document_keys.schema_of(k) or 0)
        return key, written[key]

    def runtime_version(self, node: str) -> str | None:
        """The runtime release that node's current instance reports in its status object (the
        first release reports none); None until that instance wrote one."""
        status = self.config_status(node)
        if status is None or status.get("instance_id") != self.instance[node]:
            return None
        return str(status.get(runtime_info.RUNTIME, runtime_info.FIRST_RELEASE))

    @staticmethod
    def release_version(release: str) -> str:
        """The version string of THIS or PREVIOUS."""
        return __version__ if release == THIS else str(releases.previous_release()["version"])

    def change_config(self, change: str) -> dict[str, str]:
        """`config add backend|add listener|bad`: change both documents in S3 as a deploy would."""
        if change == "add backend":
            web = self.listeners[0]
            n = len(web["backends"])
            if n >= len(topology.BACKEND_IPS):
                raise LabError(f"the lab has {len(topology.BACKEND_IPS)} backends, and all serve already")
            web["backends"].append({"name": f"be{n + 1}", "host": topology.BACKEND_IPS[n], "port": 8080})
        elif change == "add listener":
            if any(lst["port"] == SECOND_PORT for lst in self.listeners):
                raise LabError(f"a listener on port {SECOND_PORT} is there already")
            self.listeners.append({"name": "web2", "port": SECOND_PORT, "mode": "http", "check_path": "/",
                                   "backends": [dict(b) for b in self.listeners[0]["backends"]]})
        elif change == "bad":
            # Valid to the schema, refused by the real keepalived -t: no such interface.
            return self.publish_documents(interface="nosuchif0")
        else:
            raise LabError(f"config: got {change!r}; allowed: add backend, add listener, bad")
        return self.publish_documents()

    def set_dns_answers(self, backends: list[str]) -> None:
        """Make DNS_NAME answer with these lab backends' addresses (be1..be3); the DNS server
        reads them again on SIGHUP."""
        ips = [topology.BACKEND_IPS[int(b.removeprefix("be")) - 1] for b in backends]
        (self.workdir / "dns-hosts").write_text("".join(f"{ip} {DNS_NAME}\n" for ip in ips))
        if self.running_named("dns"):
            self.named["dns"].send_signal(signal.SIGHUP)

    def running_named(self, name: str) -> bool:
        """Is the latest process the lab started under `name` still running?"""
        proc = self.named.get(name)
        return proc is not None and proc.poll() is None

    def config_status(self, node: str) -> dict[str, Any] | None:
        """Node's status object in S3 (None until it wrote one)."""
        with topology.entered(ROUTER):
            try:
                body = self._s3.get_object(Bucket=CONFIG_BUCKET, Key=f"nodes/{node}/status.json")["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
        result: dict[str, Any] = json.loads(body)
        return result

    def lifecycle_file(self, node: str) -> Path:
        """What the node's group plans for its instance, as its IMDS stand-in serves it."""
        return self.node_dir(node) / "lifecycle-state"

    def start_imds(self, node: str) -> None:
        """The metadata service of node's current instance, on the node's loopback."""
        assert self.state is not None
        self.lifecycle_file(node).write_text(IN_SERVICE)
        self._spawn(f"imds-{node}", NODES[node].namespace, [
            sys.executable, "-m", "tests.support.imds_stand_in", "--port", str(IMDS_PORT),
            "--eni-id", self.state.eni[node], "--instance-id", self.instance[node],
            "--lifecycle-file", str(self.lifecycle_file(node))], log_name=f"{node}/imds.log")

    def start_haproxy(self, node: str) -> None:
        # Master-worker, as the distribution's unit runs it (-Ws): a reload (SIGUSR2 to the
        # master) starts a new worker on the same listening sockets.
        self._spawn(f"haproxy-{node}", NODES[node].namespace,
                    _pinned(self.options.haproxy_cpus,
                            ["haproxy", "-W", "-db", "-f", str(self.node_dir(node) / "haproxy.cfg"),
                             "-p", str(self.node_dir(node) / "run" / "haproxy.pid")]),
                    log_name=f"{node}/haproxy.log")

    def start_agent(self, node: str) -> None:
        self._agent_started[node] = time.time()
        run = self.node_dir(node) / "run"
        # What systemctl reload does on a node: SIGUSR2 to HAProxy's master, SIGHUP to keepalived.
        reloads = {"HAPROXY_HA_RELOAD_HAPROXY": f"sh -c 'kill -USR2 $(cat {run / 'haproxy.pid'})'",
                   "HAPROXY_HA_RELOAD_KEEPALIVED": f"sh -c 'kill -HUP $(cat {run / 'keepalived.pid'})'"}
        cwd, base_env = self._runtime(node)
        self._spawn(f"agent-{node}", NODES[node].namespace,
                    [sys.executable, "-m", "haproxy_ha_runtime", "agent", "--config", str(self.document(node))],
                    log_name=f"{node}/agent.jsonl", stderr_name=f"{node}/agent.err", env=reloads, cwd=cwd,
                    base_env=base_env)

    def start_keepalived(self, node: str) -> None:
        run = self.node_dir(node) / "run"
        since = self._agent_started.get(node, 0.0)
        _wait(lambda: any(e["event"] == "agent_start" and e["ts"] >= since for e in self.agent_events(node)), 15,
              f"the agent on node {node} to start")
        self._spawn(f"keepalived-{node}", NODES[node].namespace, [
            "keepalived", "-f", str(self.node_dir(node) / "keepalived.conf"), "-p", str(run / "keepalived.pid"),
            "-r", str(run / "vrrp.pid"), "-P", "-l", "-D", "-n"], log_name=f"{node}/keepalived.log")

    def _wait_healthy(self, node: str) -> None:
        since = self._agent_started.get(node, 0.0)
        _wait(lambda: self.agent_health(node, since) is True, 20, f"the agent on node {node} to see HAProxy healthy")

    # -- observing -------------------------------------------------------------------------
    def _log(self, path: Path) -> list[Record]:
        log = self._logs.setdefault(str(path), JsonLines(path))
        return log.records()

    def agent_events(self, node: str) -> list[Record]:
        return self._log(self.node_dir(node) / "agent.jsonl")

    def metric_records(self, node: str) -> list[Record]:
        """The EMF records node's agent wrote to its metrics file (what the CloudWatch agent ships)."""
        return self._log(self.node_dir(node) / "logs" / "metrics.jsonl")

    def agent_health(self, node: str, since: float = 0.0) -> bool | None:
        health = [e for e in self.agent_events(node) if e["event"] == "health" and e["ts"] >= since]
        return health[-1]["healthy"] if health else None

    def vrrp_state(self, node: str) -> str:
        """The last state the node's running agent logged (UNKNOWN for a restarted agent until
        it knows)."""
        return observe.vrrp_state(self.agent_events(node))[0]

    def transitions(self, node: str, after: float = 0.0) -> list[dict[str, Any]]:
        return [e for e in self.agent_events(node) if e["event"] == "transition" and e["ts"] >= after]

    def wait_master(self, node: str, timeout_s: float = 10.0) -> None:
        _wait(lambda: self.vrrp_state(node) == "MASTER", timeout_s, f"node {node} to become MASTER")

    def emulator_log(self) -> list[Record]:
        return self._log(self.workdir / "emulator.jsonl")

    def route_changes(self, after: float = 0.0) -> list[Record]:
        """Each time the emulator saw the watched tables agree on a different ENI than before
        (after `after`): the route moves as the API shows them."""
        return observe.route_changes(self.emulator_log(), after)

    def views(self) -> dict[str, routes.VipRoute]:
        assert self.state is not None
        with topology.entered(ROUTER):
            return routes.describe_vip_routes(self._api, VIP, self.state.route_table_ids)

    def route_owner(self, views: dict[str, routes.VipRoute] | None = None) -> str | None:
        """The node every table points at (in `views`, else as the API says now), or None if they
        do not agree."""
        assert self.state is not None
        views = self.views() if views is None else views
        enis = {v.eni_id if v.state == routes.ROUTE_ACTIVE else v.state for v in views.values()}
        if len(views) != len(self.state.route_table_ids) or len(enis) != 1:
            return None
        eni = enis.pop()
        return self.state.node_of(eni) if eni else None

    def wait_routes(self, node: str, timeout_s: float = 10.0) -> None:
        _wait(lambda: self.route_owner() == node, timeout_s, f"every route table to point at node {node}",
              interval_s=0.05)

    def haproxy_healthy(self, node: str) -> bool:
        # The agent's own probe, run inside the node's namespace.
        with topology.entered(NODES[node].namespace):
            return HealthCheck(STATS_PORT, timeout_s=1.0, fall=1, rise=1).probe()

    def ask_vip(self, port: int = HTTP_PORT) -> str | None:
        """One request from the client namespace; the node that answered, or None."""
        with topology.entered(topology.CLIENT):
            conn = http.client.HTTPConnection(VIP, port, timeout=1)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                return resp.getheader("X-Haproxy-Node") if resp.status == 200 else None
            except (OSError, http.client.HTTPException):
                return None
            finally:
                conn.close()

    def slow_request(self, ms: int, record: dict[str, Any]) -> None:
        """One GET /slow/MS through the VIP from the client namespace, which the backend answers
        after MS milliseconds: a request in flight.  Fills `record` in: `connected` once the request
        is sent, then `done`, `status`, `node` and `error`."""
        try:
            with topology.entered(topology.CLIENT):
                conn = http.client.HTTPConnection(VIP, HTTP_PORT, timeout=ms / 1000 + 10)
                conn.connect()  # the socket opens in the client namespace, and stays there
            try:
                conn.request("GET", f"/slow/{ms}")
                record["connected"] = time.time()
                resp = conn.getresponse()
                resp.read()
                record.update(status=resp.status, node=resp.getheader("X-Haproxy-Node"),
                              error=None if resp.status == 200 else f"http-{resp.status}")
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            record["error"] = f"{type(e).__name__}: {e}"
        record["done"] = time.time()

    @staticmethod
    def slow_request_sent(record: dict[str, Any]) -> bool:
        """Has the slow request of `record` been sent (or ended)?"""
        return "connected" in record or "done" in record

    def fault_proxy(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(PROXY_URL + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with topology.entered(ROUTER), urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    # -- faults ----------------------------------------------------------------------------
    def kill_haproxy(self, node: str, sig: int = signal.SIGKILL) -> None:
        """SIGTERM: a clean stop.  SIGKILL: a crash of the master and its workers (the master,
        frozen first, cannot start a new worker)."""
        proc = self.named[f"haproxy-{node}"]
        if sig == signal.SIGKILL:
            os.kill(proc.pid, signal.SIGSTOP)
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
        proc.send_signal(sig)
        proc.wait(5)

    def kill_keepalived(self, node: str, sig: int = signal.SIGKILL) -> None:
        """SIGTERM: a clean stop.  SIGKILL: a crash of the whole keepalived process tree.  The
        parent is frozen first: killed alone, it would let its VRRP child stop cleanly (which
        sends a priority-0 advert), and a killed child alone would be restarted by the parent."""
        proc = self.named[f"keepalived-{node}"]
        if sig == signal.SIGKILL:
            os.kill(proc.pid, signal.SIGSTOP)
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
        proc.send_signal(sig)
        proc.wait(5)

    def running(self, node: str, service: str) -> bool:
        return self.running_named(f"{service}-{node}")

    def signal_service(self, node: str, service: str, sig: int) -> None:
        """End HAProxy, keepalived or the agent on a node with `sig`, and wait for it to exit."""
        if not self.running(node, service):
            raise LabError(f"{service} on node {node} is not running")
        if service == "keepalived":
            self.kill_keepalived(node, sig)
            return
        if service == "haproxy":
            self.kill_haproxy(node, sig)
            return
        proc = self.named[f"{service}-{node}"]
        proc.send_signal(sig)
        proc.wait(5)

    def start_service(self, node: str, service: str) -> None:
        if self.running(node, service):
            raise LabError(f"{service} on node {node} is already running")
        {"haproxy": self.start_haproxy, "keepalived": self.start_keepalived, "agent": self.start_agent}[service](node)

    def delete_vip_route(self, table_id: str) -> None:
        with topology.entered(ROUTER):
            result = routes.delete_routes(self._api, VIP, [table_id])
        assert result.converged, result.tables

    def set_instance_state(self, node: str, running: bool) -> str:
        """Stop or start node's EC2 instance in moto; returns its ID."""
        assert self.state is not None
        with topology.entered(ROUTER):
            owner = routes.eni_owners(self._api, [self.state.eni[node]])[self.state.eni[node]]
            assert owner.instance_id is not None
            if running:
                self._api.start_instances(InstanceIds=[owner.instance_id])
            else:
                self._api.stop_instances(InstanceIds=[owner.instance_id])
        return owner.instance_id

    # -- the group replaces an instance ---------------------------------------------------
    def aws_calls(self, action: str, **params: str) -> list[Record]:
        """The stand-in's record of each `action` call whose parameters include `params`."""
        return [c for c in self._log(self.workdir / "aws-calls.jsonl")
                if c["action"] == action and all(c.get(k) == v for k, v in params.items())]

    def replace(self, node: str, boot_timeout_s: float = 90.0, release: str | None = None) -> dict[str, Any]:
        """Do what node's Auto Scaling group does when it replaces the instance (a new image, or
        an unhealthy instance), with the termination hook the construct adds:

        1. the group plans the termination (IMDS's target-lifecycle-state says Terminated), and
           waits for the node to complete the hook (hand over, drain);
        2. it terminates the instance: its services stop as at shutdown, and its ENI stays in
           use a while;
        3. it launches a new instance with the ENI as device 0, trying again while the ENI is in
           use;
        4. the new instance boots as the boot unit does (a fresh disk: render, HAProxy, agent,
           keepalived), and `ready` signals CloudFormation.  With `release`, the new instance
           runs that release (THIS or PREVIOUS), as a new launch template would have it.

        Returns the times of each phase, in seconds.  Raises LabError when a phase does not end.
        """
        assert self.state is not None
        eni, old = self.state.eni[node], self.instance[node]
        t0 = time.time()
        self.lifecycle_file(node).write_text(lifecycle.TERMINATED)
        # As long as the group would wait: the hand-over's margin and the drain (and a little).
        _wait(lambda: self.aws_calls("CompleteLifecycleAction", InstanceId=old),
              self.options.drain_timeout_s + lifecycle.HANDOVER_MARGIN_S + 10,
              f"node {node} to complete its termination hook", interval_s=0.05)
        t_complete = time.time()
        # Shutdown stops keepalived (ordered after the agent) first, then the agent and HAProxy.
        for service in ("keepalived", "agent", "haproxy", "imds"):
            if self.running(node, service):
                self._end([self.named[f"{service}-{node}"]])
        with topology.entered(ROUTER):
            self.eni_release.terminate(self._api, old, eni)
            launch_tries = 0

            def launched() -> str | None:
                nonlocal launch_tries
                launch_tries += 1
                try:
                    return self.eni_release.launch(eni, lambda: cloud.run_instance(self._api, node, eni))
                except ClientError as e:
                    if e.response["Error"]["Code"] != "InvalidNetworkInterface.InUse":
                        raise
                    return None  # the group tries again

            new = str(_wait(launched, 30 + self.options.eni_release_s, f"a new instance with ENI {eni}",
                            interval_s=0.5))
        self.instance[node] = new
        if release is not None:
            self.runtime[node] = release
        t_launched = time.time()
        self.boot(node)
        ready = self.ready(node, boot_timeout_s)
        if ready.returncode != 0:
            raise LabError(f"the new instance of node {node} is not ready (exit {ready.returncode}): "
                           f"{ready.stdout}{ready.stderr}")
        if not self.aws_calls("SignalResource", UniqueId=new, Status="SUCCESS"):
            raise LabError(f"the new instance of node {node} did not signal CloudFormation: {ready.stdout}")
        t_ready = time.time()
        drained = [e for e in self.agent_events(node) if e["event"] == "drained" and e["ts"] >= t0]
        return {"old_instance": old, "new_instance": new, "launch_tries": launch_tries,
                "drained": drained[0]["drained"] if drained else None,
                "drain_s": drained[0]["waited_s"] if drained else None,
                "hook_s": round(t_complete - t0, 3), "launch_s": round(t_launched - t_complete, 3),
                "boot_s": round(t_ready - t_launched, 3), "total_s": round(t_ready - t0, 3)}

    def boot(self, node: str) -> None:
        """Boot node's current instance as its boot unit does, on a fresh disk: fetch the
        document, render the configs, start HAProxy and the agent, then keepalived once HAProxy
        is healthy."""
        run = self.node_dir(node) / "run"
        shutil.rmtree(run)
        run.mkdir()
        # Boot fetches from S3 the document its user data names: its release's key.
        key = self.document_key(node, self.runtime[node])
        with topology.entered(ROUTER):
            body = self._s3.get_object(Bucket=CONFIG_BUCKET, Key=key)["Body"].read()
        self.document(node).write_bytes(body)
        render = self._run_runtime(node, ["render", "--config", str(self.document(node))], 30)
        if render.returncode != 0:
            raise LabError(f"render failed on node {node}: {render.stdout}{render.stderr}")
        self.start_imds(node)
        self.start_haproxy(node)
        self.start_agent(node)
        self._wait_healthy(node)
        self.start_keepalived(node)

    def ready(self, node: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """`python -m haproxy_ha_runtime ready` on the node, as the boot unit's last step."""
        result = self._run_runtime(node, ["ready", "--config", str(self.document(node)), "--timeout",
                                          str(int(timeout_s))], timeout_s + 30)
        with open(self.node_dir(node) / "ready.log", "a", encoding="utf-8") as log:
            log.write(f"{result.stdout}{result.stderr}(exit {result.returncode})\n")
        return result

    def link_down(self, node: str) -> None:
        topology.ip("link", "set", topology.NODE_IFACE, "down", namespace=NODES[node].namespace)

    def link_up(self, node: str) -> None:
        net = NODES[node]
        topology.ip_batch(net.namespace, [f"link set {topology.NODE_IFACE} up",
                                          f"route replace default via {net.gateway}"])

    def partition(self) -> None:
        """Cut everything between the nodes in the router; both still reach the API."""
        a, b = NODES["a"].ip, NODES["b"].ip
        topology.ip_batch(ROUTER, [f"rule add from {a} to {b} blackhole pref 100",
                                   f"rule add from {b} to {a} blackhole pref 101"])

    def heal(self) -> None:
        topology.ip_batch(ROUTER, ["rule del pref 100", "rule del pref 101"])

    def api_down(self) -> None:
        """The API stops answering the nodes and the operator (the client namespace): the router
        drops what they send to it.  The VPC router emulator, local to the API, still reads it."""
        if self._api_down_rules:
            return
        sources = [n.ip for n in NODES.values()] + [topology.CLIENT_IP]
        self._api_down_rules = [f"from {src} to {topology.API_IP} blackhole pref {_API_DOWN_PREF + i}"
                                for i, src in enumerate(sources)]
        topology.ip_batch(ROUTER, ["rule add " + r for r in self._api_down_rules])

    def api_up(self) -> None:
        rules, self._api_down_rules = self._api_down_rules, []
        if rules:
            topology.ip_batch(ROUTER, ["rule del " + r for r in rules])

    @property
    def api_url(self) -> str:
        """The EC2 endpoint the nodes use: the fault proxy's when the lab has one."""
        return PROXY_URL if self.options.fault_proxy else MOTO_URL

    def cli(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run the operator CLI, the installed `haproxy-ha` script, as an operator would: from the
        client namespace, pointed at the lab's API with the lab's dummy credentials and region.
        Killed (by PID) after `timeout_s`."""
        exe = Path(sys.executable).with_name("haproxy-ha")
        env = dict(self.env, AWS_ENDPOINT_URL=self.api_url)
        cmd = ["ip", "netns", "exec", topology.CLIENT, str(exe), *args]
        result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
        with open(self.workdir / "cli.log", "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join([exe.name, *args])}\n{result.stdout}{result.stderr}(exit {result.returncode})\n")
        return result

    # -- measuring -------------------------------------------------------------------------
    def client(self, interval_s: float = 0.01, max_s: float = 30.0, timeout_s: float = 1.0,
               tls: bool = False) -> ClientRun:
        return ClientRun(self, interval_s, max_s, timeout_s, tls)

    def failover(self, inject: Callable[[], None], survivor: str, scenario: str = "",
                 timeout_s: float = 20.0, settle_s: float = 0.3) -> Failover:
        """Run the client, inject the fault, wait until the survivor owns every route and answers
        the client, and measure.  The fault time is taken just before the fault is injected."""
        assert self.state is not None
        other = "a" if survivor == "b" else "b"
        run = self.client(max_s=timeout_s + 10)
        try:
            _wait(lambda: len(run.answered_by(other)) >= 20, 10, f"the client to be answered by node {other}")
            fault_ts = time.time()
            inject()
            eni = self.state.eni[survivor]

            def route_ts() -> float | None:
                for r in self.emulator_log():
                    if r.get("event") == "routes" and r["ts"] >= fault_ts and r.get("all") == eni:
                        return float(r["ts"])
                return None

            def client_ts() -> float | None:
                answers = run.answered_by(survivor, after=fault_ts)
                return min(r["done"] for r in answers) if answers else None

            _wait(lambda: route_ts() and client_ts(), timeout_s, f"failover to node {survivor}", interval_s=0.05)
            time.sleep(settle_s)
        finally:
            records = run.stop()
        answered: dict[str, int] = {}
        for r in records:
            key = r.get("node") or "error:" + str(r.get("error"))
            answered[key] = answered.get(key, 0) + 1
        masters = [e for e in self.transitions(survivor, fault_ts) if e["new"] == "MASTER"]
        moves = [e for e in self.agent_events(survivor) if e["event"] == "route_move" and e["ts"] >= fault_ts]
        r_ts, c_ts = route_ts(), client_ts()
        return Failover(
            scenario=scenario, fault_ts=fault_ts, survivor=survivor,
            fault_to_route_s=round(r_ts - fault_ts, 4) if r_ts else None,
            fault_to_client_s=round(c_ts - fault_ts, 4) if c_ts else None,
            fault_to_master_s=round(masters[0]["ts"] - fault_ts, 4) if masters else None,
            failed_requests=sum(1 for r in records if r.get("error")),
            answered=answered, route_moves=len(self.route_changes(fault_ts)),
            agent_route_move=moves[0] if moves else None)

    # -- the checks that hold after every scenario -----------------------------------------
    def check_converged(self, timeout_s: float = 10.0) -> str:
        """Every table points at one node whose HAProxy is healthy, and the client reaches it
        through the VIP.  Returns that node; raises LabError otherwise."""
        def ok() -> str | None:
            owner = self.route_owner()
            if owner in NODES and self.haproxy_healthy(owner) and self.ask_vip() == owner:
                return owner
            return None
        try:
            return str(_wait(ok, timeout_s, "the routes to converge on a healthy node", interval_s=0.1))
        except LabError:
            views = {t: (v.eni_id, v.state) for t, v in self.views().items()}
            health = {n: self.haproxy_healthy(n) for n in NODES}
            raise LabError(f"not converged: routes {views}, HAProxy healthy {health}, "
                           f"VIP answered by {self.ask_vip()}") from None

    # -- teardown --------------------------------------------------------------------------
    def _left_vrrp(self, procs: list[subprocess.Popen[bytes]], node: str, since: float) -> bool:
        return (all(p.poll() is not None for p in procs)
                or any(e["new"] == "STOP" for e in self.transitions(node, since)))

    @staticmethod
    def _end(procs: list[subprocess.Popen[bytes]], wait: bool = True, grace_s: float = 3.0) -> None:
        """SIGTERM each process; then, if `wait`, wait for them all, and SIGKILL what is left after
        `grace_s`."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        if not wait:
            return
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> list[str]:
        """End every process by PID and remove every namespace.  Returns what was left behind."""
        problems: list[str] = []
        try:
            self._end([p for n, p in self.started if n.startswith("client")])
            # The standby's keepalived first, then the master's: stopping the master first would
            # hand the standby a priority-0 advert, and so a needless failover, during teardown.
            # The master may go as soon as the standby has left VRRP (its agent hears STOP): a
            # keepalived takes a second to exit, and waiting for each in turn made every teardown
            # a second longer.
            names = sorted(dict.fromkeys(n for n, _ in self.started if n.startswith("keepalived-")),
                           key=lambda n: self.vrrp_state(n.split("-")[1]) == "MASTER")
            keepalived: list[subprocess.Popen[bytes]] = []
            for name in names:
                procs = [p for n, p in self.started if n == name]
                node, since = name.split("-")[1], time.time() - 0.01
                self._end(procs, wait=False)
                keepalived += procs
                with contextlib.suppress(LabError):
                    _wait(functools.partial(self._left_vrrp, procs, node, since), 1.5,
                          f"keepalived on node {node} to stop")
            self._end(keepalived)
            rest = ["agent", "haproxy", "imds", "emulator", "reconciler", "aws-stand-in", "dns", "backends",
                    "fault-proxy", "moto"]
            self._end([p for prefix in rest for n, p in self.started if n.startswith(prefix)])
            for name, proc in self.started:
                if proc.poll() is None:
                    problems.append(f"process {proc.pid} ({name}) still running")
            for ns in topology.lab_namespaces():
                stray = topology.kill_namespace_processes(ns)
                if stray:
                    problems.append(f"namespace {ns} still held processes {stray} after teardown")
            left = topology.destroy()
            if left:
                problems.append(f"namespaces left: {left}")
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        return problems


def summarize(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}
