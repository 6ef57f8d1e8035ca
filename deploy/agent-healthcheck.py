"""The agent image's health check: its endpoint proxy answers /healthz.

The proxy listens at INFERENCEKEY_AGENT_LISTEN (default 0.0.0.0:8090); on every address, or on
one of this host's, it answers at that address or at the loopback.
"""

import os
import sys
import urllib.request

host, _, port = (os.environ.get("INFERENCEKEY_AGENT_LISTEN") or "0.0.0.0:8090").rpartition(":")
host = host.strip("[]")
if host in ("", "0.0.0.0", "::"):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
try:
    urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=4)
except Exception as error:  # any failure is unhealthy: say which
    sys.exit(f"the agent's proxy at {host}:{port} does not answer: {error}")
