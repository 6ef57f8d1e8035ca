"""``python -m inferencekey.backend.package``: build a custom-backend package.

    python -m inferencekey.backend.package --src my_backend/ \\
        --entrypoint my_backend_main:MyBackend --name my-backend --version 1.0.0 \\
        --task-type text2text --requirements requirements.txt --out dist

Prints the package's path, then its SHA-256, one per line. Exit status 2 when the package
cannot be built (the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import PackagingError
from .manifest import TASK_TYPES
from .packaging import package_backend

EXIT_PACKAGING_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m inferencekey.backend.package",
        description="Build <name>-<version>.tar.gz from a backend's source.",
    )
    parser.add_argument("--src", required=True, help="a directory, or a single .py file")
    parser.add_argument("--entrypoint", required=True, help="the backend class, module:Class")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", required=True, help="the directory to write the package in")
    parser.add_argument("--slug", help="the backend slug workloads name (default: the name)")
    parser.add_argument(
        "--task-type", default="", help=f"one of {', '.join(TASK_TYPES)} (default: none)"
    )
    parser.add_argument("--requirements", help="a requirements file to ship")
    parser.add_argument("--requires-python", default="", help="a PEP 440 specifier, e.g. >=3.10")
    parser.add_argument("--description")
    parser.add_argument("--cpu-only", action="store_true", help="the backend needs no GPU")
    args = parser.parse_args(argv)
    try:
        package = package_backend(
            args.src,
            entrypoint=args.entrypoint,
            name=args.name,
            version=args.version,
            out=args.out,
            slug=args.slug,
            task_type=args.task_type,
            requirements=args.requirements,
            requires_python=args.requires_python,
            description=args.description,
            cpu_only=args.cpu_only,
        )
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PACKAGING_ERROR
    print(package.path)
    print(package.sha256)
    return 0


if __name__ == "__main__":
    sys.exit(main())
