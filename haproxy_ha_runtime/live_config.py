"""Live config: each node's document lives in S3, at a fixed key per node, and the agent applies
a new version while the node serves.

The agent polls the object with a conditional GET (If-None-Match: the ETag of the version it
has).  A new version goes the way boot goes: the document is checked, the configs rendered and
checked by `haproxy -c` and `keepalived -t`, and only then swapped in.  HAProxy is reloaded
(master-worker: the listening sockets pass to the new worker, so no connection is refused, and
the old worker finishes its requests); keepalived only when its own file changed.  The document
is saved where boot reads it, so a restart keeps it.  A version that fails a check is refused,
and the node keeps serving the one it has.

Either way the node writes its status object beside the document, which the deploy waits for:

    {"node": "a", "version": "<the document's ETag>", "state": "applied" | "refused",
     "reason": null | "...", "listeners": {"<name>": "..."}, "instance_id": "i-...", "ts": 1764000000.0}

`listeners` holds each TLS listener whose secret's current version the node refused, and why
(tls.py): that listener alone keeps its last good certificate, or is left out.  The agent checks
the secrets every tls_poll_s, and a listener's change rewrites the status (same document version).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from botocore.exceptions import ClientError

from .apply import CheckFailed, apply_config
from .config import ConfigError, NodeConfig, parse_config
from .files import write_atomically
from .tls import TlsStore

APPLIED = "applied"
REFUSED = "refused"
# What the node's services reload with; a test points them elsewhere.
RELOAD_HAPROXY = os.environ.get("HAPROXY_HA_RELOAD_HAPROXY", "systemctl reload haproxy.service")
RELOAD_KEEPALIVED = os.environ.get("HAPROXY_HA_RELOAD_KEEPALIVED", "systemctl reload keepalived.service")
# The fields a running agent takes from a new version as they are; a change to any other field
# (the VIP, the peers, the tables, the timing...) needs the agent restarted on the new document.
AGENT_LIVE_FIELDS = frozenset({"listeners", "drain_timeout_s", "replace_unhealthy_after_s"})


@dataclass(frozen=True)
class Outcome:
    """What became of one version of the document."""

    version: str
    state: str
    reason: str | None = None
    haproxy_reloaded: bool = False
    keepalived_reloaded: bool = False
    # The agent must restart on the new document (a field outside AGENT_LIVE_FIELDS changed).
    restart_agent: bool = False
    cfg: NodeConfig | None = None


def needs_agent_restart(old: NodeConfig, new: NodeConfig) -> bool:
    """Does `new` change a field that a running agent cannot take as it is?"""
    return any(getattr(old, f.name) != getattr(new, f.name) for f in fields(NodeConfig)
               if f.name not in AGENT_LIVE_FIELDS)


def _run(command: str) -> None:
    proc = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{command!r} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-500:]}")


def apply_tls(cfg: NodeConfig, tls: TlsStore, document_path: str, run: Callable[[str], None] = _run,
              haproxy: str = "haproxy", keepalived: str = "keepalived") -> tuple[bool, str | None]:
    """Bring the TLS listeners' certificates to their secrets' current versions; when that changes
    a certificate or which listeners serve, re-render, check and reload HAProxy (live: no
    connection refused).  Returns (something changed, why it could not be applied or None).
    A listener's problem that comes or goes with no certificate changed (a bad version while the
    last good one serves, or a secret that answers again) is a change too, with no reload: the
    caller reports it."""
    before, problems_before = tls.left_out(cfg), tls.problems(cfg)
    changed = tls.refresh(cfg)
    left_out, problems = tls.left_out(cfg), tls.problems(cfg)
    if not changed and left_out.keys() == before.keys():
        if problems == problems_before:
            return False, None
        return True, "; ".join(f"listener {name}: {why}" for name, why in sorted(problems.items())) or None
    try:
        applied = apply_config(cfg, document_path, haproxy, keepalived, left_out=left_out)
    except CheckFailed as e:
        return True, str(e)
    try:
        if changed or applied.haproxy_changed:
            run(RELOAD_HAPROXY)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return True, f"the new certificates are in place, but a reload failed: {e}"
    return True, None


class LiveConfig:
    """Polls one node's document in S3 and applies each new version (see the module docstring).
    With `tls`, it also keeps the TLS listeners' certificates (poll_tls) and reports their problems."""

    def __init__(self, cfg: NodeConfig, s3: Any, document_path: str, instance_id: Callable[[], str | None],
                 run: Callable[[str], None] = _run, haproxy: str = "haproxy", keepalived: str = "keepalived",
                 resolve: Callable[[NodeConfig], NodeConfig] | None = None,
                 tls: TlsStore | None = None) -> None:
        if cfg.config_bucket is None or cfg.config_key is None or cfg.status_key is None:
            raise ValueError("the document names no S3 object (config_bucket, config_key, status_key)")
        self.cfg = cfg
        self.s3 = s3
        self.document_path = document_path
        self.instance_id = instance_id
        self.run = run
        self.haproxy = haproxy
        self.keepalived = keepalived
        # What boot does to a document before it renders it (fill in a null `interface`): a
        # version must render here exactly as boot renders it, or an unchanged one would differ.
        self.resolve = resolve
        self.bucket: str = cfg.config_bucket
        self.key: str = cfg.config_key
        self.status_key: str = cfg.status_key
        # The ETag of the version this node has dealt with (applied or refused); None at start.
        self.version: str | None = None
        self.tls = tls
        # The last version's outcome, reported again when a TLS listener's problems change.
        self.last: Outcome | None = None
        # The document poller and the TLS poller both render and reload: one at a time.
        self.lock = threading.Lock()

    @property
    def source(self) -> str:
        """The document's S3 URL, as errors name it."""
        return f"s3://{self.bucket}/{self.key}"

    def fetch(self) -> tuple[str, bytes] | None:
        """The document's version (ETag) and body, or None if it is still `self.version`."""
        extra = {"IfNoneMatch": f'"{self.version}"'} if self.version else {}
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.key, **extra)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304 or e.response.get("Error", {}).get("Code") in ("304", "NotModified"):
                return None
            raise
        return str(resp["ETag"]).strip('"'), resp["Body"].read()

    def poll_once(self) -> Outcome | None:
        """Fetch; apply a new version and report it.  None when nothing changed.  S3 errors
        propagate: the caller logs them and tries again at the next poll."""
        fetched = self.fetch()
        if fetched is None:
            return None
        version, body = fetched
        with self.lock:
            outcome = self.apply(version, body)
            self.version = version
            self.last = outcome
            self.report(outcome)
        return outcome

    def poll_tls(self) -> tuple[bool, str | None]:
        """apply_tls for the document in force; when something changed, report the status again."""
        if self.tls is None:
            return False, None
        with self.lock:
            changed, error = apply_tls(self.cfg, self.tls, self.document_path, self.run, self.haproxy,
                                       self.keepalived)
            if changed and self.last is not None:
                self.report(self.last)
        return changed, error

    def apply(self, version: str, body: bytes) -> Outcome:
        """Check, render, check, swap and reload; an Outcome either way, never half-applied
        (a refused version leaves every file as it was)."""
        try:
            doc = json.loads(body)
        except ValueError as e:
            return Outcome(version, REFUSED, f"{self.source} is not valid JSON: {e}")
        try:
            new = parse_config(doc, self.source)
        except ConfigError as e:
            return Outcome(version, REFUSED, str(e))
        if new.node_name != self.cfg.node_name:
            return Outcome(version, REFUSED, f"{self.source} is node {new.node_name}'s document, not this node's "
                                             f"({self.cfg.node_name})")
        # The new document's TLS listeners may name other secrets: fetch them before rendering.
        tls_changed = self.tls.refresh(new) if self.tls is not None else False
        try:
            # Rendered as from the file boot renders from, so that an unchanged version changes
            # no file (the header names its source).
            rendered = self.resolve(new) if self.resolve is not None else new
            applied = apply_config(rendered, self.document_path, self.haproxy, self.keepalived,
                                   left_out=self.tls.left_out(new) if self.tls is not None else None)
        except (CheckFailed, ConfigError) as e:
            return Outcome(version, REFUSED, str(e))
        # From here the new files are in place: keep the document beside them, for restarts.
        write_atomically(self.document_path, json.dumps(doc, indent=2) + "\n")
        restart = needs_agent_restart(self.cfg, new)
        self.cfg = new
        problems = []
        for changed, command in ((applied.haproxy_changed or tls_changed, RELOAD_HAPROXY),
                                 (applied.keepalived_changed, RELOAD_KEEPALIVED)):
            if changed:
                try:
                    self.run(command)
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    problems.append(str(e))
        if problems:
            # The files are in place, but a service still runs the old ones: say so, loudly.
            return Outcome(version, REFUSED, "the new configs are in place, but a reload failed: "
                           + "; ".join(problems), restart_agent=restart, cfg=new)
        return Outcome(version, APPLIED, None, applied.haproxy_changed or tls_changed, applied.keepalived_changed,
                       restart, new)

    def report(self, outcome: Outcome) -> None:
        """Write this node's status object beside its document."""
        try:
            instance = self.instance_id()
        except Exception:  # the status matters more than the instance ID in it
            instance = None
        status = {"node": self.cfg.node_name, "version": outcome.version, "state": outcome.state,
                  "reason": outcome.reason,
                  "listeners": self.tls.problems(self.cfg) if self.tls is not None else {},
                  "instance_id": instance, "ts": round(time.time(), 3)}
        self.s3.put_object(Bucket=self.bucket, Key=self.status_key, Body=json.dumps(status).encode(),
                           ContentType="application/json")
