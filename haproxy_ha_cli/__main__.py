"""`python -m haproxy_ha_cli` runs the operator CLI (the same as the `haproxy-ha` command)."""

import sys

from haproxy_ha_cli.cli import main

sys.exit(main())
