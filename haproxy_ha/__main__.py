"""`python -m haproxy_ha` runs the operator CLI (the same as the `haproxy-ha` command)."""

import sys

from haproxy_ha.cli import main

sys.exit(main())
