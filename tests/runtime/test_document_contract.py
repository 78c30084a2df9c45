"""The document contract between releases (config.SCHEMA_VERSION, SCHEMA_ADDITIONS, downgrade),
held against the previous release's own code (tests/support/releases.py): the schema changes when
the shape does; release N reads N-1's documents and serves them as N-1 does; what an N-1 node is
handed during an upgrade it accepts, and serves as N serves the new document; and a field that
changes what a node serves is never silently left out for an older node."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest

from haproxy_ha_runtime import config, render
from haproxy_ha_runtime.config import Addition, DowngradeRefused, downgrade, parse_config
from tests.runtime.samples import PROFILES
from tests.support.releases import previous_release, run_release_python

# The document's shape: every field's path (`listeners[].tls.secret`).  Run as it is by this
# checkout and by the previous release, on each one's own config module.
SHAPE = '''
import dataclasses, typing

def shape(cls, prefix=""):
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        kind = hints[f.name]
        for arg in (kind, *typing.get_args(kind)):
            if dataclasses.is_dataclass(arg):
                paths += shape(arg, prefix + f.name + ("[]." if typing.get_origin(kind) is tuple else "."))
    return paths
'''
SOURCE = "the contract test"


def shape(cls: type) -> list[str]:
    scope: dict[str, Any] = {}
    exec(SHAPE, scope)
    paths: list[str] = scope["shape"](cls)
    return paths


def in_previous_release(code: str, stdin: Any = None) -> Any:
    """Run `code` with the previous release's packages; it prints one JSON value, returned here."""
    proc = run_release_python(previous_release(), code, json.dumps(stdin))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def rendered(cfg: config.NodeConfig) -> dict[str, str]:
    return {"haproxy.cfg": render.render_haproxy(cfg, SOURCE), "keepalived.conf": render.render_keepalived(cfg, SOURCE)}


RENDER_IN_RELEASE = f'''
import json, sys
from haproxy_ha_runtime import config, render
SOURCE = {SOURCE!r}
'''


def test_the_shape_changes_only_with_the_schema_version_and_by_the_additions_it_lists() -> None:
    previous = in_previous_release(SHAPE + "import json\nfrom haproxy_ha_runtime import config\n"
                                   "print(json.dumps({'schema': config.SCHEMA_VERSION, "
                                   "'shape': shape(config.NodeConfig)}))")
    now = shape(config.NodeConfig)
    if previous["schema"] == config.SCHEMA_VERSION:
        assert now == previous["shape"], (
            "the document's shape changed, and SCHEMA_VERSION did not: raise it, and list each new field in "
            "config.SCHEMA_ADDITIONS")
        return
    assert previous["schema"] + 1 == config.SCHEMA_VERSION, "one schema version per release"
    removed = set(previous["shape"]) - set(now)
    assert not removed, f"fields the previous release writes, which this one would refuse: {sorted(removed)}"
    added = set(now) - set(previous["shape"])
    listed = {a.field for a in config.SCHEMA_ADDITIONS.get(config.SCHEMA_VERSION, ())}
    assert added == listed, (
        f"added {sorted(added)}, listed in SCHEMA_ADDITIONS[{config.SCHEMA_VERSION}] {sorted(listed)}: list each "
        "new field once, saying whether it changes what a node serves (a nested one needs config.downgrade to "
        "reach it too)")
    assert max(config.SCHEMA_ADDITIONS) == config.SCHEMA_VERSION
    assert previous["schema"] == config.OLDEST_READ_SCHEMA, "release N reads N-1's documents"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_previous_release_document_is_read_and_served_as_that_release_serves_it(profile: str) -> None:
    # The previous release writes the document (its to_document, as its construct does) and renders it.
    previous = in_previous_release(RENDER_IN_RELEASE + '''
sample = json.load(sys.stdin)
cfg = config.parse_config(sample)
print(json.dumps({"document": config.to_document(cfg), "files": {
    "haproxy.cfg": render.render_haproxy(cfg, SOURCE), "keepalived.conf": render.render_keepalived(cfg, SOURCE)}}))
''', PROFILES[profile])
    cfg = parse_config(previous["document"])
    assert cfg.release is None
    assert rendered(cfg) == previous["files"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_what_a_previous_release_node_is_handed_it_accepts_and_serves_as_this_release_serves_the_new_one(
        profile: str) -> None:
    new = config.to_document(dataclasses.replace(parse_config(PROFILES[profile]), release="9.9.9"))
    assert new["version"] == config.SCHEMA_VERSION and new["release"] == "9.9.9"
    handed = downgrade(new, config.OLDEST_READ_SCHEMA)
    previous = in_previous_release(RENDER_IN_RELEASE + '''
cfg = config.parse_config(json.load(sys.stdin), "the handed document")
print(json.dumps({"haproxy.cfg": render.render_haproxy(cfg, SOURCE), "keepalived.conf": render.render_keepalived(
    cfg, SOURCE)}))
''', handed)
    assert previous == rendered(parse_config(new))


def test_the_previous_release_refuses_a_document_of_this_schema_so_it_is_never_handed_one() -> None:
    new = config.to_document(dataclasses.replace(parse_config(PROFILES["default"]), release="9.9.9"))
    outcome = in_previous_release(RENDER_IN_RELEASE + '''
try:
    config.parse_config(json.load(sys.stdin), "the new document")
    print(json.dumps("accepted"))
except config.ConfigError as e:
    print(json.dumps(e.problems))
''', new)
    assert outcome != "accepted" and any(p.startswith("version: got 2") for p in outcome)


def _with_serving_addition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend schema 2 also added stats_port, a field that changes what a node serves."""
    monkeypatch.setitem(config.SCHEMA_ADDITIONS, 2, (
        *config.SCHEMA_ADDITIONS[2], Addition("stats_port", serves=True, why="where the node serves its stats")))


def test_a_serving_field_at_its_default_is_left_out_for_an_older_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_serving_addition(monkeypatch)
    new = config.to_document(parse_config(PROFILES["default"]))
    handed = downgrade(new, 1)
    assert "stats_port" not in handed and "release" not in handed and handed["version"] == 1


def test_fails_when_a_serving_field_an_older_node_lacks_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_serving_addition(monkeypatch)
    new = config.to_document(parse_config(PROFILES["default"] | {"version": 2, "stats_port": 9000}))
    with pytest.raises(DowngradeRefused) as e:
        downgrade(new, 1)
    assert e.value.reasons == ["stats_port is 9000 (schema 2 added it: where the node serves its stats)"]


def test_a_field_that_serves_nothing_is_left_out_whatever_its_value() -> None:
    new = config.to_document(dataclasses.replace(parse_config(PROFILES["default"]), release="0.2.0"))
    assert "release" not in downgrade(new, 1)
    assert downgrade(new, 2) == new


def test_fails_when_asked_for_a_schema_no_node_reads() -> None:
    with pytest.raises(ValueError, match="version: got 0; allowed: 1 to 2"):
        downgrade(config.to_document(parse_config(PROFILES["default"])), 0)


def test_every_listed_addition_is_a_field_of_the_document() -> None:
    fields = {f.name for f in dataclasses.fields(config.NodeConfig)}
    for version, additions in config.SCHEMA_ADDITIONS.items():
        assert config.OLDEST_READ_SCHEMA < version <= config.SCHEMA_VERSION
        for a in additions:
            assert a.field in fields and typing.get_type_hints(config.NodeConfig)[a.field] is not None
