"""Reports of the token usage the gateway recorded (manager/gateway/usage.py writes it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from manager import wire
from manager.auth import display_token
from manager.db.models import Project, Token, UsageCount
from manager.errors import ValidationFailed

from .timefmt import rfc3339, utcnow

GROUPINGS: tuple[str, ...] = get_args(wire.UsageGrouping)
DEFAULT_RANGE = timedelta(days=30)
FROM_HELP = (
    "start (inclusive): an ISO 8601 date or date-time, UTC unless given; default: 30 days before to"
)
TO_HELP = "end (exclusive): an ISO 8601 date or date-time, UTC unless given; default: now"
GROUP_BY_HELP = "workload, key or day (UTC)"


def parse_moment(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or date-time (UTC unless it names an offset); 400 naming the parameter."""
    if value is None or value == "":
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an ISO 8601 date or date-time, e.g. 2026-11-01 or "
            f"2026-11-01T08:00:00Z; got {value[:40]!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def usage_range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """[from, to): to defaults to now, from to 30 days before to."""
    until = parse_moment(end, "to") or utcnow()
    since = parse_moment(start, "from") or until - DEFAULT_RANGE
    if since >= until:
        raise ValidationFailed(f"from ({rfc3339(since)}) must be before to ({rfc3339(until)})")
    return since, until


async def usage_report(
    session: AsyncSession, project: Project, start: str | None, end: str | None, group_by: str
) -> wire.UsageReport:
    if group_by not in GROUPINGS:
        raise ValidationFailed(
            f"group_by must be one of {', '.join(GROUPINGS)}; got {group_by[:40]!r}"
        )
    since, until = usage_range(start, end)
    counted = (
        func.sum(UsageCount.requests),
        func.sum(UsageCount.prompt_tokens),
        func.sum(UsageCount.completion_tokens),
        func.sum(UsageCount.total_tokens),
    )
    group: list[Any]
    if group_by == "workload":
        group = [UsageCount.workload_id]
        labels: list[Any] = [func.max(UsageCount.workload_slug)]
    elif group_by == "key":
        group = [UsageCount.key_id]
        labels = [func.max(Token.name)]
    else:
        group = [func.date(func.timezone("UTC", UsageCount.minute))]
        labels = []
    query = (
        select(*group, *labels, *counted)
        .where(
            UsageCount.project_id == project.id,
            UsageCount.minute >= since,
            UsageCount.minute < until,
        )
        .group_by(*group)
        .order_by(*group)
    )
    if group_by == "key":
        query = query.outerjoin(Token, Token.id == UsageCount.key_id)
    rows = []
    for found in (await session.execute(query)).all():
        *named, requests, prompt, completion, total = found
        row = wire.UsageRow(
            requests=requests,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
        )
        if group_by == "workload":
            row.workload_id, row.workload = named
        elif group_by == "key":
            row.key, row.key_name = display_token("live", named[0]), named[1]
        else:
            row.day = named[0].isoformat()
        rows.append(row)
    total_row = wire.UsageTotals(
        requests=sum(r.requests for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        total_tokens=sum(r.total_tokens for r in rows),
    )
    return wire.UsageReport.model_validate(
        {
            "project": project.slug,
            "from": rfc3339(since),
            "to": rfc3339(until),
            "group_by": group_by,
            "rows": rows,
            "total": total_row,
        }
    )
