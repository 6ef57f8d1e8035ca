"""``python -m ik_command ...`` runs the ``inferencekey`` command (tests and benchmarks use it)."""

from ik_command import main

raise SystemExit(main())
