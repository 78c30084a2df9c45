"""The stacks a release's templates are frozen from, and that each later commit is compared with.

It uses haproxy_ha's public API alone, so the same code builds them from a release's checkout (a
`git archive` of its commit, first on PYTHONPATH) and from HEAD's:

    PYTHONPATH=CHECKOUT python tests/support/release_apps.py --checkout CHECKOUT --out DIR

writes DIR/<stack name>.template.json for each stack in STACKS.  scripts/freeze-release runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# jsii prints a large banner on Node 20; synthesis does not need it.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk

import haproxy_ha
from haproxy_ha import HaproxyHa, HaproxyHaStack

# The env of the offline synth (app.py's placeholder), written out: it is the same in every release.
ENV = cdk.Environment(account="123456789012", region="eu-west-1")


def _context(folder: Path) -> dict[str, Any]:
    """What `cdk synth` in `folder` gives the app: cdk.json's feature flags plus cdk.context.json."""
    context = dict(json.loads((folder / "cdk.json").read_text())["context"])
    context.update(json.loads((folder / "cdk.context.json").read_text()))
    return context


def _default_app(app: cdk.App, checkout: Path) -> cdk.Stack:
    """app.py's stack, as `cdk synth` in the checkout makes it offline."""
    return HaproxyHaStack(app, "HaproxyHa", env=ENV)


def _consumer_app(app: cdk.App, checkout: Path) -> cdk.Stack:
    """consumer_example/app.py's stack: the construct in a caller's three-AZ VPC."""
    spec = importlib.util.spec_from_file_location("haproxy_ha_consumer_example",
                                                  checkout / "consumer_example" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stack: cdk.Stack = module.ConsumerStack(app, "HaproxyHaConsumer", env=ENV)
    return stack


def _dns_app(app: cdk.App, checkout: Path) -> cdk.Stack:
    """The construct on its own new VPC with `dns_name`: the private hosted zone it makes."""
    stack = cdk.Stack(app, "HaproxyHaDns", env=ENV)
    HaproxyHa(stack, "Lb", vip="192.168.254.10", dns_name="lb.internal.example")
    return stack


@dataclass(frozen=True)
class _App:
    context_dir: str  # the app's folder in the checkout, where `cdk synth` finds its context
    build: Callable[[cdk.App, Path], cdk.Stack]


# Each stack by its name (the frozen file is <name>.template.json), and the app that makes it.
STACKS: dict[str, _App] = {
    "HaproxyHa": _App(".", _default_app),
    "HaproxyHaConsumer": _App("consumer_example", _consumer_app),
    "HaproxyHaDns": _App(".", _dns_app),
}


def package_checkout() -> Path:
    """The checkout that the imported haproxy_ha package lies in."""
    return Path(haproxy_ha.__file__).resolve().parents[1]


def synthesize(name: str, checkout: Path) -> dict[str, Any]:
    """The template of stack `name`, built by the haproxy_ha imported, with the context (and, for
    the consumer, the app) of `checkout`.  The two must be the same checkout: a release's package
    with HEAD's context or app would freeze a template the release never made."""
    if package_checkout() != checkout.resolve():
        raise RuntimeError(f"haproxy_ha is imported from {haproxy_ha.__file__}, not from the checkout {checkout}; "
                           f"put {checkout} first on PYTHONPATH")
    spec = STACKS[name]
    with tempfile.TemporaryDirectory(prefix="cdk.out-") as outdir:
        app = cdk.App(context=_context(checkout / spec.context_dir), outdir=outdir, analytics_reporting=False)
        stack = spec.build(app, checkout)
        template: dict[str, Any] = app.synth().get_stack_artifact(stack.artifact_id).template
    return template


def template_path(folder: Path, name: str) -> Path:
    """Where a stack's template is written: <folder>/<name>.template.json, as `cdk synth` names it."""
    return folder / f"{name}.template.json"


def write_template(template: dict[str, Any], path: Path) -> None:
    """One template as JSON, keys in the order synthesis gave them, so a diff of two reads well."""
    path.write_text(json.dumps(template, indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write the templates to")
    parser.add_argument("--checkout", type=Path, default=Path.cwd(),
                        help="the checkout whose haproxy_ha (first on PYTHONPATH), CDK context and "
                             "consumer example are used (default: the current folder)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"haproxy_ha from {haproxy_ha.__file__}", file=sys.stderr)
    for name in STACKS:
        path = template_path(args.out, name)
        write_template(synthesize(name, args.checkout), path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
