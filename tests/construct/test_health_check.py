"""A listener's HealthCheck prop reaches both nodes' documents and the HAProxy config they render,
which the real haproxy accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import Duration
from aws_cdk.assertions import Template
from template_tools import PLACEHOLDER_ENV, node_documents, repo_context

from haproxy_ha import HaproxyHa, HealthCheck, Listener
from tests.conftest import require


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = cdk.App(context=repo_context(), outdir=str(outdir), analytics_reporting=False)
    stack = cdk.Stack(app, "Checks", env=PLACEHOLDER_ENV)
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
        Listener(port=80, name="web", backends=("10.0.2.5:8080",), health_check=HealthCheck(
            interval=Duration.seconds(10), timeout=Duration.millis(2500), healthy_threshold_count=3,
            unhealthy_threshold_count=5, healthy_http_codes="200,204", path="/ready")),
        Listener(port=5432, name="pg", mode="tcp", backends=("10.0.2.6:5432",)),
    ])
    template = Template.from_stack(stack).to_json()
    app.synth()
    return template, outdir / "haproxy-ha" / "Checks" / "Lb"


def test_the_health_check_reaches_both_documents(synthesized: tuple[dict[str, object], Path]) -> None:
    template, _ = synthesized
    documents = list(node_documents(template).values())  # type: ignore[arg-type]
    assert len(documents) == 2
    for doc in documents:
        web, pg = doc["listeners"]
        assert web["check_path"] == "/ready"
        assert web["health_check"] == {"interval_s": 10.0, "timeout_s": 2.5, "healthy_threshold": 3,
                                       "unhealthy_threshold": 5, "status_codes": "200,204"}
        # The defaults, which docs/construct.md gives (a tcp check only connects).
        assert pg["health_check"] == {"interval_s": 1.0, "timeout_s": 1.0, "healthy_threshold": 2,
                                      "unhealthy_threshold": 2, "status_codes": "200-399"}


@pytest.mark.parametrize("node", ["a", "b"])
def test_the_rendered_check_is_what_haproxy_accepts(synthesized: tuple[dict[str, object], Path], node: str) -> None:
    _, preview = synthesized
    text = (preview / node / "haproxy.cfg").read_text()
    web = text.split("\nbackend web\n", 1)[1].split("\n\n", 1)[0]
    assert "    option httpchk GET /ready" in web and "    http-check expect status 200,204" in web
    assert "    timeout check 2500ms" in web and "inter 10000ms fall 5 rise 3" in web
    binary = shutil.which("haproxy")
    require("the haproxy binary (Debian package haproxy)", binary is not None)
    assert binary is not None
    # Check only: the user and log socket lines need a node, not this host.
    result = subprocess.run([binary, "-c", "-f", "/dev/stdin"], input=text.replace("    user haproxy\n", "")
                            .replace("    group haproxy\n", ""), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
