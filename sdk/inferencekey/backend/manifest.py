"""The manifest of a custom-backend package: the ``manifest.json`` at its archive's root.

One set of rules for every side: ``package_backend`` writes a manifest through them, and
``read_manifest_from_archive`` (the Manager's registry, the worker) reads one through them.

>>> BackendManifest.from_dict({"name": "echo", "version": "1.0.0",
...                            "entrypoint": "echo_backend:Echo"}).slug
'echo'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..enums import TaskType
from ..errors import PackagingError
from ..validation import slugify

# The task types a custom backend may declare (an empty one is allowed: any).
TASK_TYPES: tuple[str, ...] = tuple(
    task.value
    for task in (
        TaskType.TEXT2TEXT,
        TaskType.EMBEDDING,
        TaskType.TEXT2IMAGE,
        TaskType.TEXT2AUDIO,
        TaskType.AUDIO2TEXT,
        TaskType.RERANKER,
        TaskType.CLASSIFICATION,
        TaskType.REWARD,
        TaskType.FORECAST,
    )
)
# The runtime protocol this SDK serves (the routes of `inferencekey.backend.serve`).
SDK_PROTOCOL = "1"

# A name and a version become the archive's file name `<name>-<version>.tar.gz`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}", re.ASCII)
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
# "module:Class": the module, and the attribute path in it.
ENTRYPOINT_PATTERN = re.compile(rf"({_DOTTED}):({_DOTTED})", re.ASCII)
# PEP 440 specifiers, checked for shape only (the worker's installer reads them for real).
_SPECIFIER = re.compile(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*", re.ASCII)
_MAX_SLUG = 100
_MAX_DESCRIPTION = 4096


@dataclass(frozen=True)
class BackendManifest:
    """What a package declares: who it is, what it serves and where its class lives.

    ``entrypoint`` is ``"module:Class"``; ``slug`` (the ``backend`` a ``WorkloadSpec`` names)
    defaults to the name, canonicalised; ``task_type`` and ``requires_python`` may be empty.
    """

    name: str
    version: str
    entrypoint: str
    slug: str = ""
    task_type: str = ""
    requires_python: str = ""
    sdk_protocol: str = SDK_PROTOCOL
    description: str | None = None
    cpu_only: bool = False

    def __post_init__(self) -> None:
        if not self.slug:
            object.__setattr__(self, "slug", slugify(self.name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendManifest:
        """A checked manifest from its JSON object; ``PackagingError`` names the first fault.

        Keys this SDK does not know are ignored, so newer packages still read.
        """
        if not isinstance(data, Mapping):
            raise PackagingError("invalid manifest: it must be a JSON object")
        name = _text(data, "name", required=True)
        if not _NAME.fullmatch(name):
            raise PackagingError(
                f"invalid manifest: name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        version = _text(data, "version", required=True)
        if not _VERSION.fullmatch(version):
            raise PackagingError(
                f"invalid manifest: version {version!r} must be 1-64 letters, digits, "
                "'.', '+', '_' or '-', starting with a letter or digit"
            )
        slug = _text(data, "slug") or slugify(name)
        if slugify(slug) != slug or len(slug) > _MAX_SLUG:
            suggestion = slugify(slug)[:_MAX_SLUG] or "my-backend"
            raise PackagingError(
                f"invalid manifest: slug {slug!r} must be lowercase letters and digits joined by "
                f"single '-' (at most {_MAX_SLUG} characters), e.g. {suggestion!r}"
            )
        task_type = _text(data, "task_type")
        if task_type and task_type not in TASK_TYPES:
            raise PackagingError(
                f"invalid manifest: task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}"
            )
        entrypoint = _text(data, "entrypoint", required=True)
        if not ENTRYPOINT_PATTERN.fullmatch(entrypoint):
            raise PackagingError(
                f"invalid manifest: entrypoint {entrypoint!r} must look like 'module:Class'"
            )
        requires_python = _text(data, "requires_python")
        if requires_python and not all(
            _SPECIFIER.fullmatch(clause) for clause in requires_python.split(",")
        ):
            raise PackagingError(
                f"invalid manifest: requires_python {requires_python!r} is not a PEP 440 "
                "specifier such as '>=3.10'"
            )
        sdk_protocol = _text(data, "sdk_protocol") or SDK_PROTOCOL
        if sdk_protocol != SDK_PROTOCOL:
            raise PackagingError(
                f"invalid manifest: sdk_protocol {sdk_protocol!r} is not supported "
                f"(this SDK serves {SDK_PROTOCOL!r})"
            )
        description = data.get("description")
        if description is not None and (
            not isinstance(description, str) or len(description) > _MAX_DESCRIPTION
        ):
            raise PackagingError(
                f"invalid manifest: description must be a string of at most {_MAX_DESCRIPTION} "
                "characters"
            )
        cpu_only = data.get("cpu_only", False)
        if not isinstance(cpu_only, bool):
            raise PackagingError("invalid manifest: cpu_only must be true or false")
        return cls(
            name=name,
            slug=slug,
            version=version,
            task_type=task_type,
            requires_python=requires_python,
            entrypoint=entrypoint,
            sdk_protocol=sdk_protocol,
            description=description,
            cpu_only=cpu_only,
        )

    @property
    def entrypoint_module(self) -> str:
        """The module half of ``entrypoint`` (``"pkg.mod"`` for ``"pkg.mod:Class"``)."""
        return self.entrypoint.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``manifest.json`` holds (optional keys only when set)."""
        data: dict[str, Any] = {
            "name": self.name,
            "slug": self.slug,
            "version": self.version,
            "task_type": self.task_type,
            "requires_python": self.requires_python,
            "entrypoint": self.entrypoint,
            "sdk_protocol": self.sdk_protocol,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.cpu_only:
            data["cpu_only"] = True
        return data


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        requirement = "a non-empty string" if required else "a string"
        raise PackagingError(f"invalid manifest: {key} must be {requirement}")
    return value.strip()
