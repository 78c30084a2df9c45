"""The route Lambda's asset runs on its own: `handler.py` finds its logic in the runtime package beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from haproxy_ha.assets import lambda_code_dir

PROBE = """
import json, sys
import handler
print(json.dumps({name: [getattr(handler, name).__module__, sys.modules[getattr(handler, name).__module__].__file__]
                  for name in ("on_event", "reconcile")}))
"""


def test_the_entry_points_the_construct_names_import_from_the_asset_alone() -> None:
    asset = lambda_code_dir()
    # Only the asset on the path (and the interpreter's site-packages, for boto3): not this checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -B: the import must not write __pycache__ into the asset, which the other tests and the
    # synth of this process (its hash) still read.
    out = subprocess.run([sys.executable, "-B", "-c", PROBE], cwd=asset, env={**env, "PYTHONPATH": str(asset)},
                         check=True, capture_output=True, text=True, timeout=60).stdout

    found = json.loads(out)
    for name in ("on_event", "reconcile"):
        module, path = found[name]
        assert module == "haproxy_ha_runtime.route_lambda"
        assert os.path.realpath(path) == os.path.realpath(asset / "haproxy_ha_runtime" / "route_lambda.py")
