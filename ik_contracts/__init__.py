"""What the Manager and the worker agent both rely on, owned by neither.

Engine recipes (data plus argv building), the agent protocol, the header names and query of the
forwarding hop, the error body, the relay and upstream HTTP client, the endpoint path rules, log
and metrics plumbing and the HTTP server's limits. This layer imports only the SDK
(``inferencekey``) and libraries; ``manager`` and ``worker_agent`` import it and never each other
(the import-linter contract in pyproject.toml holds that).
"""
