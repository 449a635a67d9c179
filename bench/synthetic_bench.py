"""Standard synthetic contextual-bandit problems: banditrec's learners beside textbook references.

Five problems, each a stream of ``rounds`` interactions with one action chosen per round and
rewards in [0, 1] (progressive validation: the score is the mean reward collected while
learning, every round learned from at once):

  linear-onehot    10 arms, context of 5, reward 0.5 + x . theta_a + N(0, 0.1^2)
  linear-features  10 fresh actions per round with 4 features each, reward
                   0.5 + 0.1 (x^T W v + u . v) + N(0, 0.1^2) (a constant, action-only and
                   context-action terms: what an intercept in the joint features is for)
  nonlinear        10 arms, Bernoulli rewards 0.15 + 0.7 exp(-|x - c_a|^2) (a bump per arm)
  binary-20        20 arms, Bernoulli rewards sigmoid(x . theta_a + b_a)
  mlp              10 fresh actions per round, Bernoulli rewards sigmoid(MLP([x, v])) of a
                   random two-layer network

Every policy meets the same stream per (problem, seed): contexts, action features and every
arm's reward are drawn up front (common random numbers). The references:

* **textbook LinUCB**: Li et al. (2010), Algorithm 1, written out here: per arm ``A_a = I``,
  ``b_a = 0``; score ``theta_a . x + alpha sqrt(x^T A_a^{-1} x)`` with alpha = 1, the arm of
  highest score played (ties to the lowest index), ``A_a += x x^T``, ``b_a += r x``. On
  one-hot problems each arm has its own model over ``x = [1, context]``; where actions are
  fresh every round, one model over ``x = [1, context] (x) [1, v]`` (the arms share it).
* **bare VW**: ``vowpalwabbit.Workspace("--cb_explore_adf --squarecb -q UA")`` on the same text
  lines (context in namespace User, action features in Action), its PMF sampled with this
  module's Generator, learning ``0:cost:p`` on the chosen line (cost = -reward).

banditrec's policies are built with ``make(spec, ...)`` and served through
``distribution(request, 1, floor).sample(rng)`` at the engine's default floor (0.01) and,
for shared LinUCB, without it; they learn every round through ``update`` with every input
of the one signature. Table: mean reward per problem (mean over seeds), the mean over the
problems, and each policy's paired difference from the textbook LinUCB with a 95% interval
over the (problem, seed) pairs (VW's against bare VW).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import vowpalwabbit
from common import blas_threads, rng
from scipy import stats

from banditrec.policies import Request, make
from banditrec.policies.base import DEFAULT_FLOOR

D = 5  # context dimension


@dataclass(frozen=True)
class Stream:
    """One problem's interactions, drawn up front: context (T, D), action features (T, K, d_a)
    (one-hot for arm problems), expected (T, K) and realised (T, K) rewards of every action."""

    name: str
    context: np.ndarray
    actions: np.ndarray
    mean: np.ndarray
    reward: np.ndarray
    fresh: bool  # actions new every round (no arm identity)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_stream(name: str, T: int, gen: np.random.Generator) -> Stream:
    x = gen.normal(size=(T, D)) / np.sqrt(D)
    if name == "linear-onehot":
        K = 10
        theta = gen.normal(0.0, 0.35, size=(K, D))
        mean = 0.5 + x @ theta.T
        reward = mean + gen.normal(0.0, 0.1, size=mean.shape)
        return Stream(name, x, np.broadcast_to(np.eye(K), (T, K, K)), mean, reward, False)
    if name == "linear-features":
        K, d = 10, 4
        W, u = gen.normal(size=(D, d)), gen.normal(size=d)
        v = gen.normal(size=(T, K, d)) / 2.0
        mean = 0.5 + 0.1 * (np.einsum("td,de,tke->tk", x, W, v) + v @ u)
        reward = mean + gen.normal(0.0, 0.1, size=mean.shape)
        return Stream(name, x, v, mean, reward, True)
    if name == "nonlinear":
        K = 10
        centre = gen.normal(size=(K, D)) / np.sqrt(D)
        mean = 0.15 + 0.7 * np.exp(-((x[:, None, :] - centre[None]) ** 2).sum(axis=2) / 0.5)
        reward = (gen.random(mean.shape) < mean).astype(float)
        return Stream(name, x, np.broadcast_to(np.eye(K), (T, K, K)), mean, reward, False)
    if name == "binary-20":
        K = 20
        theta, b = gen.normal(0.0, 1.5, size=(K, D)), gen.normal(-0.5, 0.5, size=K)
        mean = _sigmoid(x @ theta.T + b)
        reward = (gen.random(mean.shape) < mean).astype(float)
        return Stream(name, x, np.broadcast_to(np.eye(K), (T, K, K)), mean, reward, False)
    if name == "mlp":
        K, d, h = 10, 4, 16
        v = gen.normal(size=(T, K, d)) / 2.0
        W1, W2 = gen.normal(size=(D + d, h)), gen.normal(size=h) * 1.5
        inp = np.concatenate([np.broadcast_to(x[:, None, :], (T, K, D)), v], axis=2)
        mean = _sigmoid(np.tanh(inp @ W1) @ W2)
        reward = (gen.random(mean.shape) < mean).astype(float)
        return Stream(name, x, v, mean, reward, True)
    raise ValueError(name)


PROBLEMS = ("linear-onehot", "linear-features", "nonlinear", "binary-20", "mlp")


# ---- the references ---------------------------------------------------------------------------
class TextbookLinUCB:
    """Li et al. (2010), Algorithm 1 (module doc): one ridge model per arm, or one shared."""

    def __init__(self, n_models: int, dim: int, alpha: float = 1.0):
        self.alpha = alpha
        self.A_inv = np.repeat(np.eye(dim)[None], n_models, axis=0)
        self.b = np.zeros((n_models, dim))

    def choose(self, X: np.ndarray, model: np.ndarray) -> int:
        """``X (K, dim)``: each arm's feature vector; ``model (K,)``: whose model scores it."""
        P, b = self.A_inv[model], self.b[model]
        theta = np.einsum("kij,kj->ki", P, b)
        ucb = np.einsum("ki,ki->k", theta, X) + self.alpha * np.sqrt(np.einsum("ki,kij,kj->k", X, P, X))
        return int(np.argmax(ucb))

    def learn(self, x: np.ndarray, model: int, r: float) -> None:
        P = self.A_inv[model]
        Px = P @ x
        self.A_inv[model] = P - np.outer(Px, Px) / (1.0 + x @ Px)
        self.b[model] += r * x


def textbook_features(s: Stream, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Each arm's x_{t,a} and the model that scores it (module doc)."""
    c = np.r_[1.0, s.context[t]]
    K = s.mean.shape[1]
    if not s.fresh:
        return np.tile(c, (K, 1)), np.arange(K)
    u = np.c_[np.ones(K), s.actions[t]]
    return np.einsum("i,kj->kij", c, u).reshape(K, -1), np.zeros(K, dtype=np.int64)


def run_textbook(s: Stream, seed: int) -> float:
    K = s.mean.shape[1]
    X0, _ = textbook_features(s, 0)
    lin = TextbookLinUCB(1 if s.fresh else K, X0.shape[1])
    total = 0.0
    for t in range(len(s.context)):
        X, model = textbook_features(s, t)
        a = lin.choose(X, model)
        total += s.reward[t, a]
        lin.learn(X[a], int(model[a]), s.reward[t, a])
    return total / len(s.context)


def _feats(row: np.ndarray) -> str:
    """``f0:v0 f2:v2 ...``: float32 values with 9 significant digits, zeros left out (as banditrec writes)."""
    return " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(row.astype(np.float32).tolist()) if v != 0.0)


def run_bare_vw(s: Stream, seed: int) -> float:
    gen = np.random.default_rng(seed)
    total = 0.0
    with vowpalwabbit.Workspace(
        arg_list=["--cb_explore_adf", "--squarecb", "-q", "UA", "--quiet", "--random_seed", str(seed)]
    ) as vw:
        for t in range(len(s.context)):
            head = f"shared |User {_feats(s.context[t])}".rstrip()
            lines = [f"|Action {_feats(v)}".rstrip() for v in s.actions[t]]
            pmf = np.asarray(vw.predict([head, *lines]), dtype=float)
            a = int(np.searchsorted(np.cumsum(pmf), gen.random() * pmf.sum(), side="right"))
            a = min(a, len(pmf) - 1)
            r = float(s.reward[t, a])
            total += r
            lines[a] = f"0:{-r!r}:{float(pmf[a])!r} {lines[a]}"
            vw.learn([head, *lines])
    return total / len(s.context)


# ---- banditrec's policies -----------------------------------------------------------------------
def run_policy(spec: str, s: Stream, seed: int, floor: float) -> float:
    gen = np.random.default_rng(seed)
    T, K = s.mean.shape
    d_a = s.actions.shape[2]
    policy = make(spec, context_dim=D, item_dim=d_a, n_items=K, popularity=np.zeros(K))
    total = 0.0
    for t in range(T):
        items = np.arange(K) + (t * K if s.fresh else 0)  # fresh actions are new items
        V = np.ascontiguousarray(s.actions[t], dtype=float)
        draw = policy.distribution(Request(s.context[t], items, V), 1, floor).sample(gen)
        a = int(draw.index[0])
        r = s.reward[t, a]
        total += r
        policy.update(
            s.context[t][None],
            V[a][None],
            [r],
            items=items[a : a + 1],
            pscore=draw.marginal,
            propensity=draw.propensity,
            slot=[0],
            candidates=[V],
            chosen=[a],
        )
    return total / T


# ---- the table ---------------------------------------------------------------------------------
BANDITREC = [
    ("linucb", DEFAULT_FLOOR),
    ("linucb", 0.0),
    ("disjoint-linucb", DEFAULT_FLOOR),
    ("hybrid-linucb", DEFAULT_FLOOR),
    ("lints", DEFAULT_FLOOR),
    ("egreedy", DEFAULT_FLOOR),
    ("softmax", DEFAULT_FLOOR),
    ("vw-cb", DEFAULT_FLOOR),
    ("vw-cb:explorer=squarecb", DEFAULT_FLOOR),
]
ARM_ONLY = {"disjoint-linucb", "hybrid-linucb"}  # per-item models: only where arms persist


def _one_stream(task: tuple) -> dict:
    """Every policy on one (problem, seed) stream: ``{label: mean reward}`` (a worker's job)."""
    p_i, name, seed, rounds, specs = task
    with blas_threads(1):
        s = make_stream(name, rounds, rng(9000 + 100 * p_i + seed))
        out = {
            "random": float(s.mean.mean()),
            "oracle": float(s.mean.max(axis=1).mean()),
            "textbook LinUCB": run_textbook(s, seed),
            "bare VW squarecb": run_bare_vw(s, seed),
        }
        for spec, floor in specs:
            if spec.split(":")[0] in ARM_ONLY and s.fresh:
                continue
            out[spec + (" floor 0" if floor == 0 else "")] = run_policy(spec, s, seed, floor)
    return out


def bench_synthetic(cfg: dict, tmp=None, specs=BANDITREC) -> None:
    from concurrent.futures import ProcessPoolExecutor

    rounds, seeds, jobs = cfg["synthetic"]["rounds"], cfg["synthetic"]["seeds"], cfg["synthetic"].get("jobs", 2)
    print(
        f"\n== synthetic: {len(PROBLEMS)} standard contextual-bandit problems, {rounds:,} rounds each, "
        f"{seeds} seeds; mean reward while learning (progressive validation) =="
    )
    print(
        "textbook LinUCB = Li et al. 2010 Alg. 1 (alpha 1), bare VW = --cb_explore_adf --squarecb -q UA; "
        f"banditrec policies at their defaults, floor {DEFAULT_FLOOR} unless 'floor 0'; {jobs} worker processes "
        "(quality, not speed, is measured here)"
    )
    rows: dict[str, dict[tuple, float]] = {}
    start = time.perf_counter()
    tasks = [(p_i, name, seed, rounds, list(specs)) for p_i, name in enumerate(PROBLEMS) for seed in range(seeds)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for (_p_i, name, seed, _, _), got in zip(tasks, pool.map(_one_stream, tasks)):
            for label, value in got.items():
                rows.setdefault(label, {})[(name, seed)] = value
    keys = [(p, sd) for p in PROBLEMS for sd in range(seeds)]
    w = max(len(k) for k in rows)
    head = f"{'policy':<{w}} " + " ".join(f"{p:>15}" for p in PROBLEMS) + f" {'mean':>7}  {'vs ref (95% CI)':>24}"
    print(head)
    print("-" * len(head))
    for label, got in rows.items():
        cells = " ".join(
            f"{np.mean([got[(p, sd)] for sd in range(seeds)]):>15.3f}" if (p, 0) in got else f"{'-':>15}"
            for p in PROBLEMS
        )
        have = [k for k in keys if k in got]
        mean = np.mean([got[k] for k in have])
        ref = rows["bare VW squarecb"] if label.startswith("vw-cb:explorer=squarecb") else rows["textbook LinUCB"]
        diff = np.array([got[k] - ref[k] for k in have])
        if label in ("random", "oracle", "textbook LinUCB", "bare VW squarecb") or len(diff) < 2:
            vs = ""
        else:
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
            vs = f"{diff.mean():+.3f} [{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}]"
            vs += " vs VW" if ref is rows["bare VW squarecb"] else ""
        print(f"{label:<{w}} {cells} {mean:>7.3f}  {vs:>24}")
    print(f"({time.perf_counter() - start:.0f} s; command: .venv/bin/python bench/run.py --only synthetic)")
