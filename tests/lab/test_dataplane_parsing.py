"""The data-plane benchmark's reading of wrk, h2load and HAProxy output, its summary, and the lab's
nginx config (checked by the real `nginx -t`).  No root, no lab: these run with the unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.dataplane import ParseError, latency_ms, parse_h2load, parse_reuse, parse_wrk, summary
from tests.lab.backend import NGINX, nginx_command, nginx_config

WRK = """Running 5s test @ http://203.0.113.10/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.98ms    4.26ms  40.11ms   87.84%
    Req/Sec     9.90k     1.21k   11.60k    70.00%
  49535 requests in 5.01s, 8.12MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   9887.23
Transfer/sec:      1.62MB
"""

H2LOAD = """finished in 6.00s, 4176.00 req/s, 717.75KB/s
requests: 20880 total, 20896 started, 20878 done, 20870 succeeded, 8 failed, 2 errored, 1 timeout
status codes: 20866 2xx, 0 3xx, 0 4xx, 4 5xx
traffic: 3.50MB (3674880) total, 3.27MB (3424320) headers (space savings 0.00%), 326.25KB (334080) data
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
"""

SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,connect,reuse
health,FRONTEND,,,1,2,262120,40,,
agent,BACKEND,0,0,0,1,26212,12,12,0
web,FRONTEND,,,0,32,262120,205,,
web,be1,0,0,0,16,,61396,104,61292
web,BACKEND,0,0,0,32,26212,122792,203,122589
https,BACKEND,0,0,0,32,26212,51000,40,50960
"""


def test_wrk_gives_the_rate_and_counts_socket_errors_and_non_2xx_answers() -> None:
    assert parse_wrk(WRK) == {"rps": 9887.23, "requests": 49535, "errors": 3 + 1 + 2 + 7}
    clean = "\n".join(line for line in WRK.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert parse_wrk(clean)["errors"] == 0


def test_wrk_output_without_its_summary_is_refused() -> None:
    with pytest.raises(ParseError, match="Requests/sec"):
        parse_wrk("unable to connect to 203.0.113.10:80 Connection refused\n")


def test_h2load_counts_failed_errored_timed_out_and_non_2xx_answers() -> None:
    result = parse_h2load(H2LOAD)
    assert result["done"] == 20878 and result["succeeded"] == 20870
    assert result["errors"] == 8 + 2 + 1 + 4  # 4 of the succeeded were 5xx


def test_latency_percentiles_come_from_h2loads_log_and_skip_failed_answers() -> None:
    # 1..1000 us answered 200, and 50 slow 503s that must not count.
    log = "".join(f"1796303006999269\t200\t{us}\n" for us in range(1, 1001))
    log += "".join("1796303006999269\t503\t900000\n" for _ in range(50))
    result = latency_ms(log)
    assert result["p50_ms"] == pytest.approx(0.5005, abs=0.001)
    assert result["p99_ms"] == pytest.approx(0.990, abs=0.002)


def test_a_log_too_short_for_p99_or_not_h2loads_is_refused() -> None:
    with pytest.raises(ParseError, match="at least 100"):
        latency_ms("".join(f"1\t200\t{us}\n" for us in range(99)))
    with pytest.raises(ParseError, match="line 2"):
        latency_ms("1\t200\t5\nnot a log line\n")


def test_backend_connection_reuse_is_read_per_listener_without_the_agents_backend() -> None:
    assert parse_reuse(SHOW_STAT) == {"web": {"requests": 122792, "connect": 203, "reuse": 122589},
                                      "https": {"requests": 51000, "connect": 40, "reuse": 50960}}
    with pytest.raises(ParseError, match="show stat"):
        parse_reuse("Unknown command\n")


def _raw(direct_rps: float, vip_rps: float, direct_p99: float, vip_p99: float) -> dict[str, Any]:
    cpu = {"haproxy": 50.0, "nginx": 20.0}
    return {"saturation": {"direct": [{"rps": direct_rps, "errors": 0, "cpu_us_per_request": cpu}],
                           "vip": [{"rps": vip_rps, "errors": 1, "cpu_us_per_request": cpu}]},
            "held": {"direct": [{"p50_ms": 0.5, "p99_ms": direct_p99, "errors": 0}],
                     "vip": [{"p50_ms": 0.6, "p99_ms": vip_p99, "errors": 2}]}}


def test_summary_gives_each_path_as_a_ratio_to_the_direct_path() -> None:
    rows = {r["path"]: r for r in summary(_raw(20000, 15000, 1.0, 1.75))}
    assert rows["direct"]["rps_ratio"] == 1.0
    assert rows["vip"]["rps_ratio"] == 0.75
    assert rows["vip"]["p50_ratio"] == 1.2
    assert rows["vip"]["p99_added_ms"] == 0.75
    assert rows["vip"]["errors"] == 3 and rows["direct"]["errors"] == 0


@pytest.mark.skipif(shutil.which(NGINX) is None, reason=f"no {NGINX} (Debian's nginx-light)")
def test_the_labs_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(nginx_config([("127.0.0.1", 18080, "be1"), ("127.0.0.2", 18080, "be2")],
                                                      tmp_path))
    check = subprocess.run([*nginx_command(tmp_path), "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    (tmp_path / "nginx.conf").write_text(nginx_config([("127.0.0.1", 18080, "be 1")], tmp_path))
    assert subprocess.run([*nginx_command(tmp_path), "-t"], capture_output=True, timeout=30).returncode != 0
