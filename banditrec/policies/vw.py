"""Vowpal Wabbit policies: ``vw-cb`` (``--cb_explore_adf``) and ``vw-ccb`` (``--ccb_explore_adf``).

Each holds one ``vowpalwabbit.Workspace`` and speaks VW's multi-line text format. The format,
who samples and what is logged, labels and weights, snapshots and threads: docs/policies.md,
"Vowpal Wabbit (`policies/vw.py`)".
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import vowpalwabbit
from vowpalwabbit import Workspace

from ..errors import ValidationError
from ..validation import check_positive_int
from . import snapshot
from .base import Policy, PolicyConfig, Request, Rows
from .sampling import DEFAULT_DRAWS, PlackettLuceSlate, honest_se, slate_sample, with_marginals
from .slate import SlateSample
from .terms import FeatureNames, ScoreTerms, Unexplained

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # VW reads probabilities as float32: below this is 0
EXPLORERS = ("epsilon", "squarecb", "bag", "cover", "softmax")
CB_TYPES = ("mtr", "ips", "dr", "dm", "sm")
WEIGHTED_CB_TYPES = ("mtr", "ips")  # where a label probability p / w is exactly importance w / p
_LINE_CACHE_MAX = 200_000  # cached item lines (~150 bytes each) before the cache is cleared
_SEED_HIGH = 2**63


@dataclass(frozen=True)
class VWConfig(PolicyConfig):
    """Parameters of the Vowpal Wabbit policies (all written to the decision log).

    epsilon : VW's ``--epsilon``: the uniform share of the ``epsilon``, ``bag`` and ``cover``
        explorers, and the probability floor ``epsilon / n`` of ``squarecb`` and ``softmax``.
    explorer : ``squarecb`` (the default: SquareCB, Foster and Rakhlin 2020, what VW's own
        contextual-bandit benchmarks favour; ``docs/policies.md`` on choosing it) ``| epsilon
        | bag | cover | softmax``.
    gamma_scale : ``squarecb``'s ``--gamma_scale``.
    size : the number of policies of ``bag`` (``--bag``) and ``cover`` (``--cover``).
    softmax_lambda : ``softmax``'s ``--lambda`` (inverse temperature).
    cb_type : ``--cb_type``: ``mtr`` (default), ``ips``, ``dr``, ``dm`` or ``sm``.
    bits : ``-b``, bits of the feature hash table.
    seed : ``--random_seed``; with ``bag`` it drives the bootstrap of learning.
    draws : Monte-Carlo prefixes behind the marginals of slots 1..K-1.
    """

    epsilon: float = 0.05
    explorer: str = "squarecb"
    gamma_scale: float = 10.0
    size: int = 4
    softmax_lambda: float = 1.0
    cb_type: str = "mtr"
    bits: int = 18
    seed: int = 0
    draws: int = DEFAULT_DRAWS

    def __post_init__(self):
        super().__post_init__()
        if self.explore_from != 0:
            raise ValidationError(
                f"explore_from must be 0 for Vowpal Wabbit policies, got {self.explore_from}: VW's explorer "
                "explores every slot; for a greedy policy use explorer=epsilon with epsilon=0",
                "explore_from",
            )
        if self.objective:
            raise ValidationError(
                f"Vowpal Wabbit policies do not blend a business objective (VW returns probabilities, not "
                f"scores), got objective={self.objective!r}",
                "objective",
            )
        if self.explorer not in EXPLORERS:
            raise ValidationError(f"explorer must be one of {', '.join(EXPLORERS)}, got {self.explorer!r}", "explorer")
        if self.cb_type not in CB_TYPES:
            raise ValidationError(f"cb_type must be one of {', '.join(CB_TYPES)}, got {self.cb_type!r}", "cb_type")
        if self.explorer == "squarecb" and self.cb_type != "mtr":
            raise ValidationError(
                f"VW's squarecb explorer learns with cb_type mtr only, got cb_type={self.cb_type!r} "
                "(use explorer=epsilon, bag, cover or softmax for another)",
                "cb_type",
            )
        for name in ("gamma_scale", "softmax_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValidationError(f"{name} must be a finite number > 0, got {v!r}", name)
        for name, low, high in (
            ("size", 1, 1024),
            ("bits", 4, 30),
            ("seed", 0, _SEED_HIGH - 1),
            ("draws", 2, 1_000_000),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValidationError(f"{name} must be an integer in [{low}, {high}], got {v!r}", name)


@dataclass(frozen=True)
class VWCCBConfig(VWConfig):
    """As :class:`VWConfig`. ``draws`` defaults to every Monte-Carlo slate's (``DEFAULT_DRAWS``),
    the number its logged marginals need to be evaluable, although each draw is one more ccb
    predict (issue 22 moves them off the request path)."""

    def __post_init__(self):
        super().__post_init__()
        if self.max_per_type:
            raise ValidationError(
                f"vw-ccb cannot apply max_per_type={self.max_per_type}: VW samples the slots itself; use vw-cb, "
                "whose slots banditrec fills from VW's PMF",
                "max_per_type",
            )


# ---- text lines ------------------------------------------------------------------------
def _check_values(x: np.ndarray, name: str) -> None:
    """Finite and representable as float32 (VW stores features as float32)."""
    bad = ~(np.isfinite(x) & (np.abs(x) <= F32_MAX))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValidationError(
            f"{name} must be finite and within float32 range (|x| <= {F32_MAX:.3g}), found "
            f"{x[where].item()!r} at index {where if len(where) > 1 else where[0]}",
            name,
        )


def _as_float(x, name: str) -> np.ndarray:
    try:
        return np.ascontiguousarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} must be numeric: {exc}", name) from None


def _content_seed(*arrays) -> int:
    """A seed from the bytes of ``arrays``: re-scoring the same request gives the same draws."""
    h = hashlib.blake2b(digest_size=16, person=b"banditrec-vwccb")
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little")


def _features(values: np.ndarray) -> str:
    """``f0:v0 f2:v2 ...`` of a 1-D float row, float32 with 9 significant digits, zeros left out."""
    return " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(values.astype(np.float32).tolist()) if v != 0.0)


class _Lines:
    """Builds example lines; item lines are cached by the bytes of their float64 feature row."""

    def __init__(self) -> None:
        self._cache: dict[bytes, str] = {}
        self._template: dict[int, str] = {}

    def context(self, context: np.ndarray) -> str:
        return f"|User {_features(context)}".rstrip()

    def items(self, item_features: np.ndarray) -> list[str]:
        """``|Action ...`` per row of a C-contiguous float64 ``(n, d_i)`` array."""
        n, d = item_features.shape
        cache = self._cache
        raw, width = item_features.tobytes(), d * 8
        keys = [raw[i * width : (i + 1) * width] for i in range(n)]
        out = [cache.get(k) for k in keys]
        missing = [i for i, line in enumerate(out) if line is None]
        if missing:
            if len(cache) + len(missing) > _LINE_CACHE_MAX:
                cache.clear()
            template = self._template.get(d)
            if template is None:
                template = self._template[d] = "|Action " + " ".join(f"f{j}:%.9g" for j in range(d))
            rows = item_features[missing].astype(np.float32).tolist()
            for i, row in zip(missing, rows):
                if d and 0.0 not in row:
                    line = template % tuple(row)
                else:
                    line = ("|Action " + " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(row) if v != 0.0)).rstrip()
                cache[keys[i]] = out[i] = line
        return cast(list[str], out)  # every missing line was filled in


def _slot_line(k: int, *, seed: int | None = None, include: int | None = None, label: str = "") -> str:
    parts = ["ccb slot"]
    if label:
        parts.append(label)
    if include is not None:
        parts.append(str(include))
    if seed is not None:
        parts.append(f"'seed={seed}")
    return " ".join(parts) + f" |Slot s={k}"


def _label_number(x: float) -> str:
    return repr(float(x))


AUDIT_TIMEOUT_S = 30.0
_AUDITED = ("squarecb", "epsilon", "softmax")  # explorers over one regressor's per-action costs


@dataclass(frozen=True)
class Audit:
    """VW's ``--audit`` of one example, per action: ``terms[a]`` lists ``(name, weight index)``
    of every feature VW used (namespace ``^`` feature, ``*`` for interactions) and
    ``predictions[a]`` the cost VW predicted (printed to 6 decimals, after VW clips it)."""

    terms: tuple[tuple[tuple[str, int], ...], ...]
    predictions: tuple[float, ...]


def vw_audit(model: bytes, lines: list[str]) -> Audit:
    """Run ``python -m vowpalwabbit -i MODEL --audit -t`` on one multi-line example and parse its
    audit: the wheel has no ``vw`` binary, and the audit is written to the process's standard
    output, so it runs in a child process (the serving process's output is left alone)."""
    with tempfile.TemporaryDirectory(prefix="banditrec-vw-audit-") as tmp:
        model_path, data_path = Path(tmp) / "model.vw", Path(tmp) / "example.txt"
        model_path.write_bytes(model)
        data_path.write_text("\n".join(lines) + "\n\n")
        args = [sys.executable, "-m", "vowpalwabbit", "-i", str(model_path), "--audit", "-t", "--quiet"]
        try:
            out = subprocess.run(
                [*args, "-d", str(data_path)], capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S, check=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise ValidationError(f"Vowpal Wabbit's audit failed: {exc}", "explain") from None
    terms: list[tuple[tuple[str, int], ...]] = []
    predictions: list[float] = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):
            predictions.append(float(line.split()[0]))
            terms.append(())
            continue
        parsed = []
        for field in line.split("\t")[1:]:
            name, index, _, _ = field.rsplit(":", 3)  # name:index:value:weight[@...]
            parsed.append((name, int(index)))
        terms[-1] = tuple(parsed)
    return Audit(tuple(terms), tuple(predictions))


class VWPolicy(Policy):
    """What ``vw-cb`` and ``vw-ccb`` share: the workspace, its lock, lines, input checks, snapshots.

    ``context_dim`` and ``item_dim`` (environment) are optional; when given, requests and
    updates must have those widths.
    """

    Config = VWConfig
    config: VWConfig
    _reduction = ""

    def __init__(self, config: VWConfig, *, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        self.context_dim = None if context_dim is None else check_positive_int(int(context_dim), "context_dim")
        self.item_dim = None if item_dim is None else check_positive_int(int(item_dim), "item_dim")
        self._lock = threading.RLock()
        self._lines = _Lines()
        self._vw: Workspace | None = Workspace(arg_list=self.vw_args())
        self._learners = self._vw.get_enabled_learners()

    # ---- the workspace ------------------------------------------------------------------
    def vw_args(self) -> list[str]:
        """The command line the workspace is built with (not used on load: ``-i`` restores it)."""
        c = self.config
        args = [
            self._reduction,
            "--quiet",
            "--random_seed",
            str(c.seed),
            "-q",
            "UA",
            "--cb_type",
            c.cb_type,
            "--epsilon",
            repr(float(c.epsilon)),
            "-b",
            str(c.bits),
        ]
        if c.explorer == "squarecb":
            args += ["--squarecb", "--gamma_scale", repr(float(c.gamma_scale))]
        elif c.explorer in ("bag", "cover"):
            args += [f"--{c.explorer}", str(c.size)]
        elif c.explorer == "softmax":
            args += ["--softmax", "--lambda", repr(float(c.softmax_lambda))]
        return args

    def _ws(self) -> Workspace:
        if self._vw is None:
            raise ValidationError(f"{self.name} policy was closed; load a snapshot to use it again", "policy")
        return self._vw

    def _call(self, method: str, lines: list[str]):
        """``predict``/``learn`` on a list of lines (which VW finishes), under the lock."""
        with self._lock:
            vw = self._ws()
            try:
                return getattr(vw, method)(lines)
            except RuntimeError as exc:
                raise ValidationError(f"Vowpal Wabbit refused the example: {exc}", "example") from None

    def close(self) -> None:
        """Finish the workspace (no model file is written: use :meth:`save`); later calls raise."""
        with self._lock:
            if self._vw is not None:
                self._vw.finish()
                self._vw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce_ex__(self, protocol):
        raise TypeError(
            f"a {self.name} policy holds a Vowpal Wabbit Workspace, which cannot be pickled; "
            "use policy.save(path) and banditrec.policies.load(path)"
        )

    # ---- input checks -------------------------------------------------------------------
    def _request_arrays(self, request: Request, n_slots: int, min_epsilon: float):
        n_slots = check_positive_int(n_slots, "slots")
        if isinstance(min_epsilon, bool) or not isinstance(min_epsilon, (int, float)) or not 0 <= min_epsilon <= 1:
            raise ValidationError(f"min_epsilon must be a number in [0, 1], got {min_epsilon!r}", "min_epsilon")
        context = _as_float(request.context, "context")
        if context.ndim != 1:
            raise ValidationError(f"context must be 1-dimensional, got shape {context.shape}", "context")
        features = self._check_features(request.item_features, "item_features")
        self._check_width(context, self.context_dim, "context")
        n = len(features)
        if len(np.atleast_1d(request.items)) != n:
            raise ValidationError(
                f"request.items and item_features must have the same length, got "
                f"{len(np.atleast_1d(request.items))} and {n}",
                "items",
            )
        if n == 0:
            raise ValidationError("a request needs at least one candidate", "candidates")
        if n_slots > n:
            raise ValidationError(f"cannot fill {n_slots} slots from {n} candidates", "slots")
        _check_values(context, "context")
        return context, features, n_slots, float(min_epsilon)

    @staticmethod
    def _check_width(x: np.ndarray, width, name: str) -> None:
        if width is not None and x.shape[-1] != width:
            raise ValidationError(f"{name} must have {width} columns, got {x.shape[-1]}", name)

    def _check_features(self, item_features, name: str) -> np.ndarray:
        V = _as_float(item_features, name)
        if V.ndim != 2:
            raise ValidationError(f"{name} must be 2-dimensional (candidates, item_dim), got shape {V.shape}", name)
        self._check_width(V, self.item_dim, name)
        _check_values(V, name)
        return V

    def _check_update(
        self, context, item_features, reward, items, weight, probability, pname, candidates, chosen, what: str
    ):
        """Common checks of ``update``; returns arrays, with nothing learned yet."""
        X = _as_float(np.atleast_2d(context), "context")
        if X.ndim != 2:
            raise ValidationError(f"context must be (m, context_dim), got shape {X.shape}", "context")
        self._check_width(X, self.context_dim, "context")
        _check_values(X, "context")
        V = self._check_features(np.atleast_2d(item_features), "item_features")
        r = np.atleast_1d(np.asarray(reward, dtype=float))
        m = len(r)
        if r.ndim != 1 or len(X) != m or len(V) != m:
            raise ValidationError(
                f"context, item_features and reward must have one row each, got {len(X)}, {len(V)} and {r.shape}",
                "reward",
            )
        _check_values(r, "reward")
        if items is not None and len(np.atleast_1d(items)) != m:
            raise ValidationError(f"items must have one entry per row ({m}), got {len(np.atleast_1d(items))}", "items")
        if probability is None:
            raise ValidationError(
                f"{self.name} learns with importance weights and needs {pname}=(m,): {what}. Without it VW would "
                "have to guess, and a missing or zero probability makes it learn nothing",
                pname,
            )
        p = np.atleast_1d(np.asarray(probability, dtype=float))
        if p.shape != (m,):
            raise ValidationError(f"{pname} must have one entry per row ({m}), got shape {p.shape}", pname)
        bad = ~(np.isfinite(p) & (p >= F32_TINY) & (p <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValidationError(
                f"{pname} must be in (0, 1] (and at least {F32_TINY:.3g}, as VW reads it as float32), found "
                f"{p[i].item()!r} at row {i}: VW would silently learn nothing from that row",
                pname,
            )
        if weight is None:
            w = np.ones(m)
        else:
            w = np.atleast_1d(np.asarray(weight, dtype=float))
            if w.shape != (m,) or not np.isfinite(w).all() or (w < 0).any():
                raise ValidationError(
                    f"weight must be finite and >= 0 with one entry per row ({m}), got shape {w.shape}", "weight"
                )
            if self.config.cb_type not in WEIGHTED_CB_TYPES and (w != 1).any():
                raise ValidationError(
                    f"weight is applied as label probability p / w, which is an importance weight for cb_type "
                    f"{' or '.join(WEIGHTED_CB_TYPES)} only, not {self.config.cb_type}",
                    "weight",
                )
            low = (w > 0) & (w < p)
            if low.any():
                i = int(np.argmax(low))
                raise ValidationError(
                    f"weight {w[i].item()!r} at row {i} is below its {pname} {p[i].item()!r}: VW labels have no "
                    f"weight, so the weight is applied as probability p / w, which VW would clamp to 1",
                    "weight",
                )
        if candidates is None or chosen is None:
            raise ValidationError(
                f"{self.name} learns each row over its decision's candidate set: pass candidates (one (n_d, "
                f"item_dim) array per row) and chosen (the shown item's position in it)",
                "candidates",
            )
        if len(candidates) != m:
            raise ValidationError(f"candidates must hold one array per row ({m}), got {len(candidates)}", "candidates")
        c = np.atleast_1d(np.asarray(chosen))
        if c.shape != (m,) or (c.size and not np.issubdtype(c.dtype, np.integer)):
            raise ValidationError(f"chosen must be (m,) integers, got shape {c.shape} and dtype {c.dtype}", "chosen")
        cands, seen = [], {}
        for i, cand in enumerate(candidates):
            key = id(cand)
            if key not in seen:
                C = self._check_features(cand, f"candidates[{i}]")
                if len(C) == 0 or C.shape[1] != V.shape[1]:
                    raise ValidationError(
                        f"candidates[{i}] must be a non-empty (n, {V.shape[1]}) array, got shape {C.shape}",
                        "candidates",
                    )
                seen[key] = C
            C = seen[key]
            if not 0 <= c[i] < len(C):
                raise ValidationError(f"chosen must be in [0, {len(C)}) for row {i}, found {c[i]}", "chosen")
            if not np.array_equal(C[c[i]], V[i]):
                raise ValidationError(
                    f"row {i}: item_features differ from candidates[{i}][chosen[{i}]]: the rows "
                    "and candidate sets are misaligned",
                    "chosen",
                )
            cands.append(C)
        return X, r, p, w, cands, c.astype(np.int64)

    # ---- snapshots ----------------------------------------------------------------------
    def _model_bytes(self) -> bytes:
        with self._lock, tempfile.TemporaryDirectory(prefix="banditrec-vw-") as tmp:
            path = Path(tmp) / "model.vw"
            self._ws().save(str(path))
            data = path.read_bytes()
        if not data:
            raise ValidationError("Vowpal Wabbit wrote an empty model file", "snapshot")
        return data

    def state(self):
        """``({"payload": VW model bytes}, meta)``: meta holds the model's SHA-256 and size."""
        data = self._model_bytes()
        meta = {
            "vw_version": vowpalwabbit.__version__,
            "model_sha256": hashlib.sha256(data).hexdigest(),
            "model_size": len(data),
            "learners": list(self._learners),
        }
        return {"payload": data}, meta

    def set_state(self, arrays, meta):
        """Load VW model bytes (``-i``) into a new workspace and swap it in; the old one keeps
        serving if anything is wrong. The checksum in ``meta`` is required: VW itself loads a
        truncated model file as a silently (partly) fresh model."""
        if set(arrays) != {"payload"} or not isinstance(arrays["payload"], (bytes, bytearray)):
            raise ValidationError(f"a {self.name} snapshot holds a VW model file, got {sorted(arrays)}", "snapshot")
        data = bytes(arrays["payload"])
        if "model_sha256" not in meta:
            raise ValidationError(
                "snapshot meta lacks model_sha256: VW would load a truncated model silently", "snapshot"
            )
        if hashlib.sha256(data).hexdigest() != meta["model_sha256"] or len(data) != meta.get("model_size"):
            raise ValidationError("VW model bytes do not match their checksum: truncated or corrupt", "snapshot")
        with tempfile.TemporaryDirectory(prefix="banditrec-vw-") as tmp:
            path = Path(tmp) / "model.vw"
            path.write_bytes(data)
            try:
                new = Workspace(arg_list=["--quiet", "-i", str(path)])
            except RuntimeError as exc:
                raise ValidationError(f"Vowpal Wabbit cannot load the model: {exc}", "snapshot") from None
        learners = new.get_enabled_learners()
        if learners != self._learners:
            new.finish()
            raise ValidationError(
                f"the VW model's reductions {learners} do not match this {self.name} config's {self._learners}",
                "snapshot",
            )
        with self._lock:
            old, self._vw = self._vw, new
        if old is not None:
            old.finish()

    def save(self, path, *, provenance: dict | None = None) -> Path:
        """Write VW's model file as ``<stem>.vw`` plus the ``.json`` manifest (atomic, checksummed)."""
        arrays, meta = self.state()
        return snapshot.save(
            path,
            name=self.name,
            params=self.params,
            model_version=self.model_version,
            arrays={},
            meta={**meta, "n_updates": int(self.n_updates)},
            payload=arrays["payload"],
            payload_suffix=".vw",
            provenance=provenance,
        )


class VWContextualBandit(VWPolicy):
    """``vw-cb``: ``--cb_explore_adf``; the carousel is Plackett-Luce over VW's PMF."""

    name = "vw-cb"
    Config = VWConfig
    _reduction = "--cb_explore_adf"
    needs = frozenset({"pscore", "candidates", "chosen"})

    def example(
        self, context: np.ndarray, item_features: np.ndarray, *, label_at: int = -1, label: str = ""
    ) -> list[str]:
        """The example's lines: ``shared |User ...``, one ``|Action ...`` per candidate, and
        ``label`` (``0:cost:prob``) in front of action ``label_at`` when learning."""
        actions = self._lines.items(item_features)
        if label_at >= 0:
            actions = list(actions)
            actions[label_at] = f"{label} {actions[label_at]}"
        return [f"shared {self._lines.context(context)}", *actions]

    def pmf(self, request: Request) -> np.ndarray:
        """VW's PMF over ``request``'s candidates, (n,), in candidate order."""
        context, features, _, _ = self._request_arrays(request, 1, 0.0)
        return self._pmf(context, features)

    def _pmf(self, context, features) -> np.ndarray:
        pmf = np.asarray(self._call("predict", self.example(context, features)), dtype=float)
        if pmf.shape != (len(features),) or not np.isfinite(pmf).all() or (pmf < 0).any():
            raise ValidationError(
                f"Vowpal Wabbit returned a PMF of shape {pmf.shape} for {len(features)} "
                "candidates (is the shared line missing its keyword?)",
                "pmf",
            )
        return pmf

    def scores(self, request: Request) -> np.ndarray:
        return self.pmf(request)

    def score_terms(self, request: Request, names: FeatureNames) -> ScoreTerms | Unexplained:
        """VW's ``--audit`` of the request (:func:`vw_audit`): each candidate's estimated reward
        (minus VW's cost) as ``-value x weight`` per feature, with the weights read from this
        workspace; VW's explorer turned those costs into the PMF the slots were drawn from."""
        if self.config.explorer not in _AUDITED:
            return Unexplained(
                f"vw-cb with explorer={self.config.explorer} draws from the votes of several VW models; "
                "no single score per candidate to audit"
            )
        context, features, _, _ = self._request_arrays(request, 1, 0.0)
        lines = self.example(context, features)
        with self._lock:
            audit = vw_audit(self._model_bytes(), lines)
            ws = self._ws()
            weight = {i: ws.get_weight(i) for a in audit.terms for _, i in a}
        n = len(features)
        if len(audit.terms) != n:
            return Unexplained(f"Vowpal Wabbit's audit listed {len(audit.terms)} actions for {n} candidates")
        c32, v32 = context.astype(np.float32), features.astype(np.float32)
        columns: dict[str, int] = {}
        cells: list[tuple[int, int, float]] = []
        for a, terms in enumerate(audit.terms):
            for name, index in terms:
                value, label = _audit_value(name, c32, v32[a], names)
                j = columns.setdefault(label, len(columns))
                cells.append((a, j, -float(value) * weight[index]))
        values = np.zeros((n, len(columns) + 1))
        for a, j, x in cells:
            values[a, j] += x
        # VW clips each predicted cost to the range of costs seen: the clip is a term of its own
        reward = -np.asarray(audit.predictions)
        clip = reward - values.sum(axis=1)
        values[:, -1] = np.where(np.abs(clip) > 1e-5 * np.maximum(1.0, np.abs(reward)), clip, 0.0)
        labels: tuple[str, ...] = (*columns, "vw:clipped to the costs seen")
        if not values[:, -1].any():
            labels, values = labels[:-1], values[:, :-1]
        return ScoreTerms(
            labels,
            values,
            np.zeros(n),
            "vw-audit",
            blended=False,
            note=(
                f"minus VW's predicted cost, from its audit; VW's {self.config.explorer} explorer turned every "
                "candidate's cost into the PMF the slot was drawn from"
            ),
        )

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> PlackettLuceSlate:
        """Plackett-Luce over VW's PMF, each slot mixed with the serving floor ``min_epsilon``."""
        context, features, n_slots, min_epsilon = self._request_arrays(request, n_slots, min_epsilon)
        pmf = self._pmf(context, features)
        return PlackettLuceSlate(pmf, np.full(n_slots, min_epsilon), draws=self.config.draws, **self.type_cap(request))

    def learn(self, rows: Rows) -> None:
        """One VW ``learn`` per logged row, over that row's whole candidate set.

        ``rows`` (:class:`~.base.Rows`): context (m, d_c), item_features (m, d_i) of the shown
        items, reward (m,); pscore (m,) : the row's logged **marginal** P(slot k holds this item
        | context); candidates : m arrays (n_d, d_i), the candidates presented at the row's
        decision; chosen (m,) : the shown item's position in its candidates; weight (m,) :
        importance weights (label probability ``pscore / weight``; docs/policies.md, "Vowpal
        Wabbit"). Everything is checked before the first row is learned.
        """
        X, r, p, w, cands, c = self._check_update(
            rows.context,
            rows.item_features,
            rows.reward,
            rows.items,
            rows.weight,
            rows.pscore,
            "pscore",
            rows.candidates,
            rows.chosen,
            "the logged marginal probability of each shown item in its slot",
        )
        learned = 0
        for i in range(len(r)):
            if w[i] == 0:
                continue
            label = f"0:{_label_number(-r[i])}:{_label_number(p[i] / w[i])}"
            self._call("learn", self.example(X[i], cands[i], label_at=int(c[i]), label=label))
            learned += 1
        if learned:
            self.n_updates += 1


def _audit_value(name: str, context: np.ndarray, item: np.ndarray, names: FeatureNames) -> tuple[np.float32, str]:
    """The float32 value VW multiplies a weight by for audited feature ``name`` (``Constant``,
    ``User^f3``, ``Action^f1``, ``User^f3*Action^f1``), and its name in the shop's terms."""
    value, labels = np.float32(1.0), []
    for part in name.split("*"):
        ns, _, feature = part.partition("^")
        if ns == "User" and feature.startswith("f"):
            k = int(feature[1:])
            value, label = value * context[k], names.ctx(k)
        elif ns == "Action" and feature.startswith("f"):
            j = int(feature[1:])
            value, label = value * item[j], names.itm(j)
        elif ns == "Constant":
            label = "intercept"
        else:
            raise ValidationError(f"Vowpal Wabbit's audit names a feature banditrec did not write: {name!r}", "explain")
        labels.append(label)
    return value, " × ".join(labels)


class VWSlate:
    """The slate distribution of ``vw-ccb`` for one request: VW samples, per slot, from the
    actions not taken by earlier slots.

    ``sample(rng)`` makes one ccb predict whose slot lines carry tag seeds drawn from ``rng``.
    ``conditionals`` are VW's exact per-slot probabilities (one predict per slot, earlier slots
    forced with VW's per-slot action lists). ``marginals`` are exact for slot 0 and the average
    over ``draws`` predicts (tag seeds from a stream seeded by the request's content) of every
    action's slot-k probability given each sampled prefix; ``marginal_se`` their standard error.
    """

    def __init__(
        self,
        policy: VWConditionalContextualBandit,
        context: np.ndarray,
        features: np.ndarray,
        n_slots: int,
        *,
        min_epsilon: float = 0.0,
        draws: int = DEFAULT_DRAWS,
        seed: int | None = None,
    ):
        self._policy = policy
        self._head = [
            f"ccb shared {policy._lines.context(context)}",
            *("ccb action " + a for a in policy._lines.items(features)),
        ]
        self._n = len(features)
        self._k = int(n_slots)
        self.min_epsilon = float(min_epsilon)
        self.draws = int(draws)
        self.seed = (
            _content_seed(
                np.asarray(context, dtype=float),
                features,
                np.array([self._k, self.draws]),
                np.array([policy.config.seed]),
            )
            if seed is None
            else int(seed)
        )
        self._marg: np.ndarray | None = None
        self._se: np.ndarray | None = None

    @property
    def n_candidates(self) -> int:
        return self._n

    @property
    def n_slots(self) -> int:
        return self._k

    @property
    def marginal_draws(self) -> int:
        return self.draws if self._k > 1 else 0

    def greedy(self) -> VWSlate:
        """Itself: Vowpal Wabbit samples the slate (see :meth:`SlateDistribution.greedy
        <banditrec.policies.slate.SlateDistribution.greedy>`)."""
        return self

    def _predict(self, slot_lines: list[str]) -> list[list[tuple[int, float]]]:
        out = self._policy._call("predict", self._head + slot_lines)
        if len(out) != len(slot_lines):
            raise ValidationError(f"Vowpal Wabbit returned {len(out)} slots for {len(slot_lines)}", "pmf")
        return out

    def _run(self, seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One predict: chosen candidate (K,), its probability (K,), every slot's PMF (K, n)
        with VW's chosen-first lists mapped back to candidate order."""
        n, K = self._n, self._k
        slots = self._predict([_slot_line(k, seed=int(s)) for k, s in enumerate(seeds)])
        index = np.empty(K, dtype=np.int64)
        pmfs = np.zeros((K, n))
        shown = np.zeros(n, dtype=bool)
        for k, pairs in enumerate(slots):
            listed, probs = zip(*pairs) if pairs else ((), ())
            actions = np.array(listed, dtype=np.int64)
            valid = (
                len(actions) == n - k
                and actions.min() >= 0
                and actions.max() < n
                and not shown[actions].any()
                and np.count_nonzero(np.bincount(actions, minlength=n)) == n - k
            )
            if not valid:
                raise ValidationError(
                    f"Vowpal Wabbit's slot {k} lists actions {sorted(actions.tolist())[:10]}..., "
                    f"expected the {n - k} not taken by earlier slots",
                    "pmf",
                )
            pmfs[k, actions] = probs
            index[k] = actions[0]  # the chosen action comes first
            shown[actions[0]] = True
        return index, pmfs[np.arange(K), index], pmfs

    def _check_floor(self, index: np.ndarray, pmfs: np.ndarray) -> None:
        if self.min_epsilon <= 0:
            return
        shown = np.zeros(self._n, dtype=bool)
        for k in range(self._k):
            floor = self.min_epsilon / (self._n - k) * (1 - 1e-5)  # VW computes in float32
            low = ~shown & (pmfs[k] < floor)
            if low.any():
                raise ValidationError(
                    f"VW gave candidate {int(np.argmax(low))} probability {pmfs[k][low][0]:.3g} "
                    f"in slot {k}, below the serving floor {floor:.3g}",
                    "min_epsilon",
                )
            shown[index[k]] = True

    def sample(self, rng: np.random.Generator, marginals: bool = True) -> SlateSample:
        """One slate sampled by VW with per-slot seeds from ``rng``; conditionals are VW's
        probabilities of the chosen actions, marginals from :meth:`marginals` (all from one
        model: the policy's lock is held throughout, so no update lands in between).
        ``marginals=False`` skips them (NaN), for simulations that never log or divide by them."""
        with self._policy._lock:
            sample = self.draw(rng)
            return self.complete(sample) if marginals else sample

    def draw(self, rng: np.random.Generator) -> SlateSample:
        """One slate sampled by VW with its conditionals (VW's probabilities, exact); the
        Monte-Carlo marginals NaN, for :meth:`complete` before the model learns again."""
        with self._policy._lock:
            index, cond, pmfs = self._run(rng.integers(0, _SEED_HIGH, size=self._k))
            self._check_floor(index, pmfs)
        return slate_sample(index, cond, None, draws=self.draws, marginal_draws=self.marginal_draws)

    def complete(self, sample: SlateSample) -> SlateSample:
        """``sample`` with the marginals of its slots (:meth:`marginals`)."""
        return with_marginals(self, sample.index, sample.propensity) if sample.pending else sample

    def marginals(self) -> np.ndarray:
        """(n, K) P(slot k holds candidate j): exact for slot 0, Rao-Blackwellised MC after."""
        if self._marg is None:
            seeds = np.random.default_rng(self.seed).integers(0, _SEED_HIGH, size=(max(self.draws, 1), self._k))
            total = np.zeros((self._k, self._n))
            total_sq = np.zeros((self._k, self._n))
            first = None
            with self._policy._lock:  # every draw from the same model
                for row in seeds[: self.draws if self._k > 1 else 1]:
                    _, _, pmfs = self._run(row)
                    first = pmfs[0] if first is None else first
                    total += pmfs
                    total_sq += pmfs * pmfs
            d = self.draws if self._k > 1 else 1
            mean = total / d
            var = np.maximum(total_sq - d * mean * mean, 0.0) / max(d - 1, 1)
            self._se = honest_se(mean, np.sqrt(var), d, 0.0, 1.0).T
            mean[0] = first  # every draw gives slot 0 the same PMF: keep it exact
            self._se[:, 0] = 0.0
            self._marg = mean.T
            self._marg.setflags(write=False)
        return self._marg

    def marginal_se(self) -> np.ndarray:
        """(n, K) standard error of :meth:`marginals` (0 for slot 0; at most 0.5 / sqrt(draws))."""
        self.marginals()
        assert self._se is not None  # marginals() computes it
        return self._se

    def conditionals(self, index) -> np.ndarray:
        """VW's probability of ``index[k]`` in slot k given ``index[:k]`` in the earlier slots:
        one predict per slot, with each earlier slot restricted to its given action."""
        index = np.asarray(index, dtype=np.int64)
        if index.shape != (self._k,):
            raise ValidationError(f"a slate has {self._k} positions, got shape {index.shape}", "index")
        if not ((0 <= index) & (index < self._n)).all() or len(np.unique(index)) != self._k:
            raise ValidationError(
                f"a slate holds {self._k} distinct candidates in [0, {self._n}), got {index.tolist()}", "index"
            )
        out = np.empty(self._k)
        with self._policy._lock:
            for k in range(self._k):
                lines = [_slot_line(j, seed=0, include=int(index[j])) for j in range(k)] + [_slot_line(k, seed=0)]
                pairs = dict(self._predict(lines)[k])
                out[k] = pairs[int(index[k])]
        return out


class VWConditionalContextualBandit(VWPolicy):
    """``vw-ccb``: ``--ccb_explore_adf``; VW samples the whole slate (see :class:`VWSlate`)."""

    name = "vw-ccb"
    Config = VWCCBConfig
    config: VWCCBConfig
    _reduction = "--ccb_explore_adf"
    needs = frozenset({"propensity", "slot", "candidates", "chosen"})

    def score_terms(self, request: Request, names: FeatureNames) -> Unexplained:
        return Unexplained(
            "vw-ccb: VW samples each slot itself over slot-dependent features, and its audit re-samples "
            "the earlier slots; it cannot describe the served slate"
        )

    def scores(self, request: Request) -> np.ndarray:
        """VW's slot-0 PMF over the candidates (exact; later slots depend on earlier ones)."""
        return self.distribution(request, 1).marginals()[:, 0].copy()

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> VWSlate:
        """VW's slate distribution. VW's sampling cannot be mixed with a floor afterwards, so a
        serving floor ``min_epsilon`` must be met by VW's own ``--epsilon`` (each explorer gives
        every remaining action at least ``epsilon / n_remaining``); it is checked on each slate."""
        context, features, n_slots, min_epsilon = self._request_arrays(request, n_slots, min_epsilon)
        if min_epsilon > self.config.epsilon:
            raise ValidationError(
                f"vw-ccb cannot mix a serving floor into VW's own slot sampling: min_epsilon={min_epsilon} needs "
                f"epsilon >= {min_epsilon}, the policy has epsilon={self.config.epsilon}",
                "min_epsilon",
            )
        return VWSlate(self, context, features, n_slots, min_epsilon=min_epsilon, draws=self.config.draws)

    def example(self, context: np.ndarray, item_features: np.ndarray, slot_lines: list[str]) -> list[str]:
        return [
            f"ccb shared {self._lines.context(context)}",
            *("ccb action " + a for a in self._lines.items(item_features)),
            *slot_lines,
        ]

    def learn(self, rows: Rows) -> None:
        """One VW ``learn`` per logged decision: its whole slate, each slot labelled.

        Rows are slots: the rows of one decision are consecutive with ``slot`` 0, 1, ..., K-1
        and share context and candidates. ``propensity (m,)``: the **conditional** probability
        of the row's item given the earlier slots (``SlateSample.propensity``, what VW
        returned); the marginal ``pscore`` is not read. candidates, chosen, weight as for
        ``vw-cb``. Everything is checked before the first decision is learned.
        """
        slot = rows.slot
        X, r, p, w, cands, c = self._check_update(
            rows.context,
            rows.item_features,
            rows.reward,
            rows.items,
            rows.weight,
            rows.propensity,
            "propensity",
            rows.candidates,
            rows.chosen,
            "the conditional probability VW gave each shown item given the earlier slots",
        )
        m = len(r)
        if slot is None:
            raise ValidationError("vw-ccb groups rows into slates by slot=(m,) (0, 1, ..., K-1 per decision)", "slot")
        s = np.atleast_1d(np.asarray(slot))
        if s.shape != (m,) or (s.size and not np.issubdtype(s.dtype, np.integer)):
            raise ValidationError(f"slot must be (m,) integers, got shape {s.shape}", "slot")
        starts = np.flatnonzero(s == 0)
        if m and (len(starts) == 0 or starts[0] != 0):
            raise ValidationError(
                f"slot must start each decision at 0, the first row has slot {int(s[0]) if m else None}", "slot"
            )
        bounds = np.r_[starts, m]
        decisions = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if not np.array_equal(s[a:b], np.arange(b - a)):
                raise ValidationError(
                    f"rows {a}..{b - 1} must be slots 0..{b - a - 1} of one decision, got {s[a:b].tolist()}", "slot"
                )
            for i in range(a + 1, b):
                if not (np.array_equal(X[i], X[a]) and np.array_equal(cands[i], cands[a])):
                    raise ValidationError(
                        f"row {i} has a different context or candidate set than row {a} of the same decision",
                        "candidates",
                    )
            if len(np.unique(c[a:b])) != b - a:
                raise ValidationError(f"rows {a}..{b - 1} show an item twice in one slate: {c[a:b].tolist()}", "chosen")
            if b - a > len(cands[a]):
                raise ValidationError(f"rows {a}..{b - 1}: {b - a} slots from {len(cands[a])} candidates", "slot")
            if w[a:b].any() and not w[a:b].all():
                # a slot's action still leaves the later slots' action sets: it cannot be dropped alone
                raise ValidationError(
                    f"rows {a}..{b - 1}: vw-ccb cannot skip one slot of a slate (weight 0); give "
                    "every slot of a decision a weight > 0, or all 0",
                    "weight",
                )
            decisions.append((a, b))
        learned = 0
        for a, b in decisions:
            if not w[a:b].any():
                continue
            lines = []
            for k, i in enumerate(range(a, b)):
                label = f"{int(c[i])}:{_label_number(-r[i])}:{_label_number(p[i] / w[i])}"
                lines.append(_slot_line(k, label=label))
            self._call("learn", self.example(X[a], cands[a], lines))
            learned += 1
        if learned:
            self.n_updates += 1
