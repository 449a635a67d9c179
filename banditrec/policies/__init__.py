"""Policies behind one protocol, built from spec strings such as ``"linucb:alpha=0.5,epsilon=0.05"``.

Adding a policy is one module and one entry in ``REGISTRY``.
"""

from __future__ import annotations

import dataclasses

from ..errors import ValidationError
from .base import Policy, PolicyConfig, Request
from .linucb import LinUCB
from .simple import Popularity, Uniform
from .slate import EpsilonGreedySlate, SlateSample, rank_slot_marginals

REGISTRY: dict[str, type[Policy]] = {cls.name: cls for cls in (Uniform, Popularity, LinUCB)}


def _convert(value: str, kind, name: str):
    if kind in (float, "float"):
        try:
            return float(value)
        except ValueError:
            raise ValidationError(f"policy parameter {name} must be a number, got {value!r}", name) from None
    if kind in (int, "int"):
        try:
            return int(value)
        except ValueError:
            raise ValidationError(f"policy parameter {name} must be an integer, got {value!r}", name) from None
    return value


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:k=v,k=v"`` into the name and raw parameter strings."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError(f"policy spec must be a non-empty string, got {spec!r}", "policy")
    name, _, body = spec.strip().partition(":")
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValidationError(f"policy parameter must look like key=value, got {part!r} in {spec!r}", "policy")
        if key.strip() in params:
            raise ValidationError(f"policy parameter {key.strip()} given twice in {spec!r}", "policy")
        params[key.strip()] = value.strip()
    return name.strip(), params


def make(spec: str, **env) -> Policy:
    """Build a policy from a spec string; ``env`` passes what the deployment knows.

    >>> make("uniform").name
    'uniform'
    """
    name, raw = parse_spec(spec)
    if name not in REGISTRY:
        raise ValidationError(f"unknown policy {name!r}; known: {', '.join(sorted(REGISTRY))}", "policy")
    cls = REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValidationError(
            f"policy {name} has no parameter {', '.join(unknown)}; it takes: {', '.join(fields)}", "policy"
        )
    typed = {k: _convert(v, fields[k].type, k) for k, v in raw.items()}
    return cls(cls.Config(**typed), **env)


__all__ = [
    "REGISTRY",
    "EpsilonGreedySlate",
    "LinUCB",
    "Policy",
    "PolicyConfig",
    "Popularity",
    "Request",
    "SlateSample",
    "Uniform",
    "make",
    "parse_spec",
    "rank_slot_marginals",
]
