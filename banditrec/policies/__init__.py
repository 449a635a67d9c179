"""Policies behind one protocol, built from spec strings such as ``"linucb:alpha=0.5,epsilon=0.05"``.

Adding a policy is one module and one entry in ``REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import warnings

from ..errors import ValidationError
from . import snapshot
from .base import SENSITIVITY, Policy, PolicyConfig, Request
from .bernoulli import BernoulliTS
from .disjoint import DisjointLinUCB
from .greedy import EpsilonGreedy, Softmax
from .hybrid import HybridLinUCB
from .linucb import LinUCB
from .simple import Popularity, Uniform
from .slate import EpsilonGreedySlate, SlateDistribution, SlateSample, rank_slot_marginals
from .thompson import LinTS
from .vw import VWConditionalContextualBandit, VWContextualBandit

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        Uniform,
        Popularity,
        EpsilonGreedy,
        Softmax,
        LinUCB,
        DisjointLinUCB,
        HybridLinUCB,
        LinTS,
        BernoulliTS,
        VWContextualBandit,
        VWConditionalContextualBandit,
    )
}


# old registry names that still parse, with a DeprecationWarning
DEPRECATED_NAMES = {"shared-linucb": "linucb"}


def _current_name(name: str, renamed: dict[str, str], where: str) -> str:
    new = renamed.get(name)
    if new is None:
        return name
    warnings.warn(f"{where} names policy {name!r}, which is now {new!r}", DeprecationWarning, stacklevel=3)
    return new


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
    """Split a policy spec into its registry name and raw parameter strings.

    Parameters
    ----------
    spec : str
        ``"name"`` or ``"name:key=value,key=value"``.

    Returns
    -------
    name : str
        The registry name (a deprecated name is mapped to its current one, with a warning).
    params : dict of str to str
        The parameters, not yet converted.

    Raises
    ------
    ValidationError
        An empty spec, a parameter without ``=``, or a parameter given twice.
    """
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
    return _current_name(name.strip(), DEPRECATED_NAMES, f"spec {spec!r}"), params


def make(spec: str, **env) -> Policy:
    """Build a policy from a spec string.

    Parameters
    ----------
    spec : str
        ``"name:key=value,..."``; the names are in :data:`REGISTRY`, the keys are the fields of
        the policy's ``Config``.
    **env
        What the deployment knows: ``context_dim``, ``item_dim``, ``n_items``, ``popularity``,
        ... (the keys of ``banditrec.policies.base.ENVIRONMENT``).

    Returns
    -------
    Policy

    Raises
    ------
    ValidationError
        An unknown policy, parameter or environment key, or a value out of range.

    Examples
    --------
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


def _check_params(manifest: dict, cls) -> dict:
    """The manifest's params, if each is a field of the Config and has its type (the config then
    checks ranges); a field the snapshot lacks (added since it was written) takes its default."""
    fields = {f.name: f.type for f in dataclasses.fields(cls.Config)}
    params = manifest["params"]
    unknown = sorted(set(params) - set(fields))
    if unknown:  # a parameter added since the snapshot was written (absent here) takes its default
        raise ValidationError(
            f"snapshot params {sorted(params)} do not match policy {cls.name}'s "
            f"{sorted(fields)}: it has no {', '.join(unknown)}",
            "snapshot",
        )
    kinds = {"float": (int, float), float: (int, float), "int": (int,), int: (int,), "str": (str,), str: (str,)}
    for key, value in params.items():
        allowed = kinds.get(fields[key])
        if allowed is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            raise ValidationError(f"snapshot param {key} must be of type {fields[key]}, found {value!r}", "snapshot")
    return params


def load(path, *, manifest_sha256: str | None = None, **env) -> Policy:
    """Rebuild a policy from a snapshot written by ``policy.save(path)``.

    Parameters
    ----------
    path : str or Path
        The snapshot's manifest (``<stem>.json``).
    manifest_sha256 : str, optional
        The manifest's hash from a publishing pointer; a manifest that differs is refused.
    **env
        As for :func:`make`; it may describe a larger catalog than the snapshot's (items added
        since start cold).

    Returns
    -------
    Policy
        With the snapshot's state. A parameter the policy gained since the snapshot was
        written takes its default; a format-2 snapshot loads under the current policy name.

    Raises
    ------
    ValidationError
        A missing, truncated, altered or ill-typed snapshot.
    """
    manifest, payload = snapshot.load(path, manifest_sha256=manifest_sha256)
    name = manifest["policy"]
    if manifest["format"] == snapshot.FORMAT_2:
        name = _current_name(name, snapshot.RENAMED_SINCE_2, f"snapshot {path} (format 2)")
    if name not in REGISTRY:
        raise ValidationError(
            f"snapshot is of unknown policy {name!r}; known: {', '.join(sorted(REGISTRY))}", "snapshot"
        )
    cls = REGISTRY[name]
    try:
        config = cls.Config(**_check_params(manifest, cls))
    except ValidationError as exc:
        raise ValidationError(f"snapshot params are not a valid {name} config: {exc.message}", "snapshot") from None
    policy = cls(config, **env)
    meta = dict(manifest["meta"])
    policy.n_updates = meta.pop("n_updates", 0)
    policy.set_state(payload if isinstance(payload, dict) else {"payload": payload}, meta)
    return policy


__all__ = [
    "REGISTRY",
    "EpsilonGreedySlate",
    "DisjointLinUCB",
    "EpsilonGreedy",
    "HybridLinUCB",
    "LinTS",
    "LinUCB",
    "Softmax",
    "VWConditionalContextualBandit",
    "VWContextualBandit",
    "Policy",
    "PolicyConfig",
    "Popularity",
    "Request",
    "SlateDistribution",
    "SlateSample",
    "Uniform",
    "SENSITIVITY",
    "load",
    "make",
    "parse_spec",
    "rank_slot_marginals",
]
