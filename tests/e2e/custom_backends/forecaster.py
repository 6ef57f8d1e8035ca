"""A seasonal-naive forecaster: each step repeats the value one season back, and the quantiles
spread around it by the season-on-season residuals, wider for every season further out.

``season_length`` comes from the workload's config (``ctx.config``); 1 is plain naive.
"""

from __future__ import annotations

import math
import statistics

from inferencekey.backend import (
    BackendContext,
    CustomBackend,
    ForecastRequest,
    ForecastResult,
    InvalidInput,
    Job,
    Result,
)


class SeasonalNaive(CustomBackend):
    name = "seasonal-naive"
    version = "1.0.0"
    task_type = "forecast"
    cpu_only = True

    def setup(self, ctx: BackendContext) -> None:
        self.season_length = int(ctx.config.get("season_length", 1))
        if self.season_length < 1:
            raise ValueError("season_length must be at least 1")

    def process(self, job: Job) -> Result:
        raise InvalidInput("this backend only forecasts (POST .../forecast)")

    def forecast(self, req: ForecastRequest) -> ForecastResult:
        season = self.season_length
        target = req.target
        if len(target) < season:
            raise InvalidInput(f"target needs at least one season ({season} values)")
        last_season = target[-season:]
        median = [last_season[step % season] for step in range(req.horizon)]
        residuals = [target[t] - target[t - season] for t in range(season, len(target))]
        spread = statistics.pstdev(residuals) if residuals else 0.0
        normal = statistics.NormalDist()
        quantiles = {
            level: [
                value + normal.inv_cdf(level) * spread * math.sqrt(step // season + 1)
                for step, value in enumerate(median)
            ]
            for level in req.quantile_levels
        }
        return ForecastResult(median=median, quantiles=quantiles)
