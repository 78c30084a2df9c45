"""Live config: each node's document lives in S3, at a fixed key per node and schema, and the agent
applies a new version while the node serves.

Each poll reads the metadata (HEAD) of the node's own schema's key and of the key of the schema
before, and follows the one that document_keys.choose names: the older key when an older release's
writer wrote it last (a rollback), else its own.  A new version goes the way boot goes: the
document is checked, the configs rendered and checked by `haproxy -c` and `keepalived -t`, and only
then swapped in.  HAProxy is reloaded (master-worker: the listening sockets pass to the new worker,
so no connection is refused, and the old worker finishes its requests); keepalived only when its
own file changed.  The document is saved where boot reads it, so a restart keeps it.  A version
that fails a check is refused, and the node keeps serving the one it has.

Either way the node writes its status object, which the deploy waits for:

    {"node": "a", "version": "<ETag>", "versions": {"<key>": "<ETag>", ...}, "key": "<key applied>",
     "state": "applied" | "refused", "reason": null | "...", "listeners": {"<name>": "..."},
     "runtime": "0.2.0", "schema": 2, "release": "<the writer's release>", "instance_id": "i-...",
     "ts": 1764000000.0}

`versions` holds, for each document key the node follows, the ETag it follows there (its own
schema's key and the one before, when they hold the same write); `version` is the one of the
oldest schema, which release 0.1.0's deploy waits for.  `runtime` and `schema` say which release
the node runs and which schema it reads.

`listeners` holds each TLS listener whose secret's current version the node refused, and why
(tls.py): that listener alone keeps its last good certificate, or is left out.  The agent checks
the secrets every tls_poll_s, and a listener's change rewrites the status (same document version).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from botocore.exceptions import ClientError

from . import document_keys, runtime_info
from .apply import CheckFailed, apply_config
from .config import SCHEMA_VERSION, ConfigError, NodeConfig, parse_config
from .files import write_atomically
from .tls import TlsStore

APPLIED = "applied"
REFUSED = "refused"
# What the node's services reload with; a test points them elsewhere.
RELOAD_HAPROXY = os.environ.get("HAPROXY_HA_RELOAD_HAPROXY", "systemctl reload haproxy.service")
RELOAD_KEEPALIVED = os.environ.get("HAPROXY_HA_RELOAD_KEEPALIVED", "systemctl reload keepalived.service")
# The fields a running agent takes from a new version as they are; a change to any other field
# (the VIP, the peers, the tables, the timing...) needs the agent restarted on the new document.
AGENT_LIVE_FIELDS = frozenset({"listeners", "drain_timeout_s", "replace_unhealthy_after_s", "release"})
# S3's answers for a key that is not there, or not this node's to read (a rollback's IAM).
_ABSENT = ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden")


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
    # The key the version is of.
    key: str | None = None


def needs_agent_restart(old: NodeConfig, new: NodeConfig) -> bool:
    """Does `new` change a field that a running agent cannot take as it is?  A document of the
    schema before names its own key, beside this node's: the same place to watch."""
    same_place = (old.config_key is not None and new.config_key is not None
                  and document_keys.own_key(old.config_key) == document_keys.own_key(new.config_key))
    return any(getattr(old, f.name) != getattr(new, f.name) for f in fields(NodeConfig)
               if f.name not in AGENT_LIVE_FIELDS and not (f.name == "config_key" and same_place))


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


class DocumentMissing(RuntimeError):
    """Neither of the node's document keys can be read (the bucket, or the node's access, is gone)."""


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
        # This node's schema's key, and the one before (document_keys), whatever the document names.
        self.key: str = document_keys.own_key(cfg.config_key)
        self.legacy_key: str | None = document_keys.legacy_key(cfg.config_key)
        self.status_key: str = cfg.status_key
        # The key and ETag of the version this node has dealt with (applied or refused); None at start.
        self.version: str | None = None
        self.version_key: str | None = None
        # What the node follows, key by key: its status object's `versions`.
        self.follows: dict[str, str] = {}
        self.tls = tls
        # The last version's outcome, reported again when a TLS listener's problems change.
        self.last: Outcome | None = None
        # The document poller and the TLS poller both render and reload: one at a time.
        self.lock = threading.Lock()
        # Why this node, leaving, still holds the VIP (None: it does not, or is not leaving).
        self.leaving_held: str | None = None

    @property
    def source(self) -> str:
        """The document's S3 URL, as errors name it."""
        return f"s3://{self.bucket}/{self.key}"

    def _head(self, key: str, absent: dict[str, str]) -> document_keys.Seen | None:
        """The key's ETag and writer metadata; None when it is absent or not this node's to read
        (S3's code for that goes into `absent`)."""
        try:
            resp = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            if code in _ABSENT:
                absent[key] = code
                return None
            raise
        return document_keys.seen(str(resp["ETag"]), resp.get("Metadata") or {})

    def fetch(self) -> tuple[str, str, bytes, dict[str, str]] | None:
        """The key and version (ETag) of the document to follow, its body, and the versions the
        node then follows key by key; None if it is still `self.version`, or while a write is
        under way.  The body is read only when it is new, and only if it is still that version."""
        absent: dict[str, str] = {}
        legacy = self._head(self.legacy_key, absent) if self.legacy_key is not None else None
        own = self._head(self.key, absent)
        which = document_keys.choose(legacy, own)
        if which is None:
            if legacy is None and own is None:
                raise DocumentMissing("no document of this node can be read: " + "; ".join(
                    f"s3://{self.bucket}/{key}: {code}" for key, code in absent.items()))
            return None
        key, seen = (self.legacy_key, legacy) if which == document_keys.LEGACY else (self.key, own)
        assert key is not None and seen is not None
        follows = {key: seen.etag}
        if which == document_keys.OWN and legacy is not None:
            assert self.legacy_key is not None
            follows = {self.legacy_key: legacy.etag, **follows}
        if (key, seen.etag) == (self.version_key, self.version):
            if follows != self.follows and self.last is not None:
                with self.lock:
                    self.follows = follows
                    self.report(self.last)
            return None
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key, IfMatch=f'"{seen.etag}"')["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return None  # it changed since the HEAD: the next poll sees the new one
            raise
        return key, seen.etag, body, follows

    def poll_once(self) -> Outcome | None:
        """Fetch; apply a new version and report it.  None when nothing changed.  S3 errors
        propagate: the caller logs them and tries again at the next poll."""
        fetched = self.fetch()
        if fetched is None:
            return None
        key, version, body, follows = fetched
        with self.lock:
            outcome = self.apply(version, body, key)
            self.version, self.version_key, self.follows = version, key, follows
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

    def apply(self, version: str, body: bytes, key: str | None = None) -> Outcome:
        """Check, render, check, swap and reload; an Outcome either way, never half-applied
        (a refused version leaves every file as it was)."""
        key = key or self.key
        source = f"s3://{self.bucket}/{key}"
        refused = functools.partial(Outcome, version, REFUSED, key=key)
        try:
            doc = json.loads(body)
        except ValueError as e:
            return refused(f"{source} is not valid JSON: {e}")
        try:
            new = parse_config(doc, source)
        except ConfigError as e:
            return refused(str(e))
        if new.node_name != self.cfg.node_name:
            return refused(f"{source} is node {new.node_name}'s document, not this node's ({self.cfg.node_name})")
        # The new document's TLS listeners may name other secrets: fetch them before rendering.
        tls_changed = self.tls.refresh(new) if self.tls is not None else False
        try:
            # Rendered as from the file boot renders from, so that an unchanged version changes
            # no file (the header names its source).
            rendered = self.resolve(new) if self.resolve is not None else new
            applied = apply_config(rendered, self.document_path, self.haproxy, self.keepalived,
                                   left_out=self.tls.left_out(new) if self.tls is not None else None)
        except (CheckFailed, ConfigError) as e:
            return refused(str(e))
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
            return refused("the new configs are in place, but a reload failed: " + "; ".join(problems),
                           restart_agent=restart, cfg=new)
        return Outcome(version, APPLIED, None, applied.haproxy_changed or tls_changed, applied.keepalived_changed,
                       restart, new, key)

    def note_leaving(self, held: str | None) -> None:
        """The instance is leaving, and still holds the VIP for `held` (None: no longer): say so in
        the status object, beside the document's outcome."""
        with self.lock:
            self.leaving_held = held
            if self.last is not None:
                # The status is a report: the hand-over goes on without it.
                with contextlib.suppress(Exception):
                    self.report(self.last)

    def report(self, outcome: Outcome) -> None:
        """Write this node's status object beside its document."""
        try:
            instance = self.instance_id()
        except Exception:  # the status matters more than the instance ID in it
            instance = None
        follows = self.follows or {outcome.key or self.key: outcome.version}
        # The oldest schema's version first: what release 0.1.0's deploy reads as `version`.
        oldest = min(follows, key=lambda k: document_keys.schema_of(k) or SCHEMA_VERSION)
        status = {"node": self.cfg.node_name, "version": follows[oldest], "versions": follows,
                  "key": outcome.key or self.key, "state": outcome.state, "reason": outcome.reason,
                  "listeners": self.tls.problems(self.cfg) if self.tls is not None else {},
                  **runtime_info.reported(), "release": self.cfg.release,
                  **({"leaving_held": self.leaving_held} if self.leaving_held is not None else {}),
                  "instance_id": instance, "ts": round(time.time(), 3)}
        self.s3.put_object(Bucket=self.bucket, Key=self.status_key, Body=json.dumps(status).encode(),
                           ContentType="application/json")
