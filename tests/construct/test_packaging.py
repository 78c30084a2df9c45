"""`pip install` of this project gives another app everything the construct needs to build its assets."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, haproxy_ha, haproxy_ha.assets as a
print(json.dumps({
    "package": haproxy_ha.__file__,
    "lambda": sorted(str(p.relative_to(a.lambda_code_dir())) for p in a.lambda_code_dir().rglob("*") if p.is_file()),
    "node": sorted(str(p.relative_to(a.node_files_dir())) for p in a.node_files_dir().rglob("*") if p.is_file()),
    "user_data": {name: a.user_data_file(name) for name in a.USER_DATA_FILES},
}))
"""


def test_the_wheel_carries_lambda_and_node_files(tmp_path: Path) -> None:
    # No build isolation: the build needs no network (setuptools>=77 is a dev dependency).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("haproxy_ha-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    assert {"haproxy_ha/lambda_src/handler.py", "haproxy_ha/userdata/boot.sh", "haproxy_ha/py.typed",
            "haproxy_ha_runtime/routes.py", "haproxy_ha_runtime/py.typed"} <= names

    # Run from the unpacked wheel, away from this checkout, as another app would.
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         check=True, capture_output=True, text=True, timeout=60).stdout
    found = json.loads(out)
    assert found["package"].startswith(str(site))
    assert {"handler.py", "haproxy_ha_runtime/routes.py", "haproxy_ha_runtime/config.py"} <= set(found["lambda"])
    assert {"boot.sh", "haproxy-ha-agent.service", "haproxy_ha_runtime/agent.py",
            "haproxy_ha_runtime/__main__.py"} <= set(found["node"])
    # The files user data writes come from the wheel too, as they are in the checkout.
    assert found["user_data"] == {name: (REPO / "userdata" / name).read_text()
                                  for name in ("haproxy-ha-boot.service", "fetch-node-files.sh",
                                               "haproxy-ha-boot-failed.service", "boot-failed.sh")}
