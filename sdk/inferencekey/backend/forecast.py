"""The forecast contract: what ``POST /forecast`` accepts and what a backend answers.

>>> req = ForecastRequest.from_dict({"id": "f-1", "target": [1, 2, 3], "horizon": 2})
>>> req.quantile_levels
[0.1, 0.5, 0.9]
>>> ForecastResult(median=[4.0, 5.0], quantiles={0.1: [3.5, 4.2], 0.9: [4.4, 5.9]}).to_dict()
{'forecast': {'median': [4.0, 5.0], 'quantiles': {'0.1': [3.5, 4.2], '0.9': [4.4, 5.9]}}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .job import InvalidInput

DEFAULT_QUANTILE_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)


def quantile_key(level: float | str) -> str:
    """The key a quantile level has in ``quantiles``: ``quantile_key(0.1) == "0.1"``."""
    return level if isinstance(level, str) else repr(float(level))


@dataclass(frozen=True)
class ForecastRequest:
    """One forecast to make: ``horizon`` steps after the series ``target``.

    Checked when built (``InvalidInput``, so a 400, names the first fault): ``id`` non-empty;
    ``target`` non-empty finite numbers; ``horizon`` an integer > 0; ``timestamps`` as many as
    ``target``; ``freq`` non-empty (pandas-style, e.g. ``"h"``); each of ``quantile_levels``
    in (0, 1); each ``past_covariates`` series as long as ``target``, each
    ``future_covariates`` series ``horizon`` long; ``num_samples`` an integer > 0.
    """

    id: str
    target: list[float]
    horizon: int
    timestamps: list[str | float] | None = None
    freq: str | None = None
    quantile_levels: list[float] = field(default_factory=lambda: list(DEFAULT_QUANTILE_LEVELS))
    past_covariates: dict[str, list[float]] | None = None
    future_covariates: dict[str, list[float]] | None = None
    num_samples: int | None = None
    return_samples: bool = False

    @classmethod
    def from_dict(cls, body: Any) -> ForecastRequest:
        """The request in a ``POST /forecast`` body (unknown keys are ignored)."""
        if not isinstance(body, Mapping):
            raise InvalidInput("the forecast request must be a JSON object")
        quantile_levels = body.get("quantile_levels")
        return cls(
            id=body.get("id"),  # type: ignore[arg-type]  # checked in __post_init__
            target=body.get("target"),  # type: ignore[arg-type]
            horizon=body.get("horizon"),  # type: ignore[arg-type]
            timestamps=body.get("timestamps"),
            freq=body.get("freq"),
            quantile_levels=(
                list(DEFAULT_QUANTILE_LEVELS) if quantile_levels is None else quantile_levels
            ),
            past_covariates=body.get("past_covariates"),
            future_covariates=body.get("future_covariates"),
            num_samples=body.get("num_samples"),
            return_samples=body.get("return_samples", False),
        )

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidInput("id must be a non-empty string")
        if not isinstance(self.target, list) or not self.target:
            raise InvalidInput("target must be a non-empty list of numbers")
        object.__setattr__(self, "target", _numbers(self.target, "target"))
        if not _is_int(self.horizon) or self.horizon <= 0:
            raise InvalidInput("horizon must be an integer greater than 0")
        if self.timestamps is not None:
            if not isinstance(self.timestamps, list) or len(self.timestamps) != len(self.target):
                raise InvalidInput(
                    f"timestamps must be a list as long as target ({len(self.target)})"
                )
            for index, stamp in enumerate(self.timestamps):
                if not isinstance(stamp, str) and not _is_number(stamp):
                    raise InvalidInput(f"timestamps[{index}] must be a string or a number")
        if self.freq is not None and (not isinstance(self.freq, str) or not self.freq.strip()):
            raise InvalidInput("freq must be a non-empty string")
        if not isinstance(self.quantile_levels, list):
            raise InvalidInput("quantile_levels must be a list of numbers")
        levels = _numbers(self.quantile_levels, "quantile_levels")
        for index, level in enumerate(levels):
            if not 0.0 < level < 1.0:
                raise InvalidInput(
                    f"quantile_levels[{index}] must be between 0 and 1 (exclusive), got {level}"
                )
        object.__setattr__(self, "quantile_levels", levels)
        object.__setattr__(
            self,
            "past_covariates",
            _covariates(self.past_covariates, "past_covariates", len(self.target), "target"),
        )
        object.__setattr__(
            self,
            "future_covariates",
            _covariates(self.future_covariates, "future_covariates", self.horizon, "horizon"),
        )
        if self.num_samples is not None and (
            not _is_int(self.num_samples) or self.num_samples <= 0
        ):
            raise InvalidInput("num_samples must be an integer greater than 0")
        if not isinstance(self.return_samples, bool):
            raise InvalidInput("return_samples must be true or false")


@dataclass(frozen=True)
class ForecastResult:
    """What ``forecast()`` returns, answered as ``{"forecast": {...}}``.

    ``median`` has ``horizon`` values; ``quantiles`` maps a level (``0.1`` or ``"0.1"``) to
    ``horizon`` values; ``samples`` is a list of ``horizon``-long paths. Sequences of numbers
    such as NumPy arrays are accepted.
    """

    median: Sequence[float]
    timestamps: Sequence[Any] | None = None
    quantiles: Mapping[float | str, Sequence[float]] | None = None
    samples: Sequence[Sequence[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"forecast": {"median", "timestamps"?, "quantiles"?, "samples"?}}``."""
        forecast: dict[str, Any] = {"median": _output_numbers(self.median, "median")}
        if self.timestamps is not None:
            forecast["timestamps"] = list(self.timestamps)
        if self.quantiles is not None:
            forecast["quantiles"] = {
                quantile_key(level): _output_numbers(values, f"quantiles[{quantile_key(level)}]")
                for level, values in self.quantiles.items()
            }
        if self.samples is not None:
            forecast["samples"] = [
                _output_numbers(path, f"samples[{index}]")
                for index, path in enumerate(self.samples)
            ]
        return {"forecast": forecast}


def forecast_answer(result: ForecastResult, req: ForecastRequest) -> dict[str, Any]:
    """The body answering ``req``; ``ValueError`` when a series is not ``horizon`` long."""
    answer = result.to_dict()
    forecast = answer["forecast"]
    series = [("median", forecast["median"])]
    if "timestamps" in forecast:
        series.append(("timestamps", forecast["timestamps"]))
    series.extend(
        (f"quantiles[{key}]", values) for key, values in forecast.get("quantiles", {}).items()
    )
    series.extend(
        (f"samples[{index}]", path) for index, path in enumerate(forecast.get("samples", []))
    )
    for label, values in series:
        if len(values) != req.horizon:
            raise ValueError(
                f"forecast() returned {label} with {len(values)} values for horizon {req.horizon}"
            )
    return answer


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: list[Any], label: str) -> list[float]:
    for index, value in enumerate(values):
        if not _is_number(value) or not math.isfinite(value):
            raise InvalidInput(f"{label}[{index}] must be a finite number")
    return [float(value) for value in values]


def _covariates(
    covariates: Any, label: str, length: int, length_name: str
) -> dict[str, list[float]] | None:
    if covariates is None:
        return None
    if not isinstance(covariates, Mapping):
        raise InvalidInput(f"{label} must be an object of name → list of numbers")
    checked = {}
    for name, values in covariates.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{label} names must be non-empty strings")
        if not isinstance(values, list) or len(values) != length:
            raise InvalidInput(
                f"{label}[{name!r}] must be a list of {length} numbers (as long as {length_name})"
            )
        checked[name] = _numbers(values, f"{label}[{name!r}]")
    return checked


def _output_numbers(values: Iterable[Any], label: str) -> list[float]:
    numbers = [float(value) for value in values]
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"forecast() returned a non-finite number in {label}")
    return numbers
