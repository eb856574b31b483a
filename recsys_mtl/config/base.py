"""What every config section shares: the frozen, closed base model and :func:`flatten`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen", "flatten"]


class Frozen(BaseModel):
    """A config section: immutable once loaded, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/models to ``{"a.b.c": value}`` (lists become strings)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
    else:
        out[prefix[:-1]] = ",".join(map(str, obj)) if isinstance(obj, list | tuple) else obj
    return out
