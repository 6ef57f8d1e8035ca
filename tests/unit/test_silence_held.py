"""The rule that holds lost workers while most of the fleet is silent (manager/planning.py
``silence_held``), and its settings."""

from __future__ import annotations

import re

import pytest

from manager.planning import silence_held
from manager.settings import Settings
from manager.states import WorkerState

READY, NOT_READY, LOST, REGISTERED = (
    WorkerState.READY,
    WorkerState.NOT_READY,
    WorkerState.LOST,
    WorkerState.REGISTERED,
)


def held(states: list[WorkerState]) -> tuple[int, int] | None:
    return silence_held(states, share=0.5, fleet_at_least=10)


def test_half_of_a_fleet_of_ten_silent_is_held() -> None:
    assert held([READY] * 5 + [NOT_READY] * 3 + [LOST] * 2) == (5, 10)
    assert held([READY] * 6 + [NOT_READY] * 4) is None


def test_a_fleet_smaller_than_the_least_is_never_held() -> None:
    assert held([NOT_READY] * 9) is None
    assert silence_held([LOST], share=0.5, fleet_at_least=1) == (1, 1)


def test_workers_that_never_heartbeated_are_not_the_fleet() -> None:
    assert held([READY] * 5 + [NOT_READY] * 4 + [REGISTERED] * 5) is None
    assert held([READY] * 5 + [NOT_READY] * 5 + [REGISTERED] * 30) == (5, 10)


def test_the_share_is_of_the_fleet_from_a_hundredth_to_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_WORKER_SILENCE_SHARE", "0.8")
    monkeypatch.setenv("INFERENCEKEY_WORKER_SILENCE_FLEET", "50")
    settings = Settings.from_env()
    assert (settings.worker_silence_share, settings.worker_silence_fleet) == (0.8, 50)
    monkeypatch.setenv("INFERENCEKEY_WORKER_SILENCE_SHARE", "1.5")
    too_much = re.escape("must be at most 1 (a share of the fleet), got 1.5")
    with pytest.raises(ValueError, match=too_much):
        Settings.from_env()
    monkeypatch.setenv("INFERENCEKEY_WORKER_SILENCE_SHARE", "0")
    with pytest.raises(ValueError, match="INFERENCEKEY_WORKER_SILENCE_SHARE"):
        Settings.from_env()
