"""bench section ``requestpath``: every registered policy's 10-slot decision over 200 candidates,
in process, on the request path (``distribution(...).draw(rng)``: the slate and what is exact and
cheap; Monte-Carlo values deferred) beside the bare computation that policy cannot avoid, the
eager ``sample(rng)`` it replaces, and ``complete`` (the deferred work, off the request path).

Bare computations: the ridge family's scoring in bare numpy (bench/run.py ``bare_scoring``, with
the joint features built inside the timed call); Bernoulli TS's one posterior draw
(``rng.beta`` over the candidates); uniform's ``rng.choice``; popularity's score gather; the
VW policies' ``Workspace.predict`` of the lines the policy builds.
"""

from __future__ import annotations

import numpy as np
from common import compare, rng, table, us

from banditrec.policies import REGISTRY, Request, make

N_CAND, N_SLOTS, MIN_EPSILON = 200, 10, 0.01
TARGET_US = 1000.0


def _ridge_cases(name: str, gen, run):
    policy = run.d32_policy(name, gen)
    items = gen.choice(run.D32_ITEMS, N_CAND, replace=False)
    request = Request(
        context=gen.normal(size=run.D32_CONTEXT), items=items, item_features=gen.normal(size=(N_CAND, run.D32_ITEM))
    )
    bare, formula = run.bare_scoring(policy, request, gen)
    if name != "disjoint-linucb":  # the joint features are part of the bare work
        features = run.bare_features(request)
        score = bare

        def bare():
            features()
            return score()

        formula += " (joint features built in the call)"
    return policy, request, bare, formula


def _catalog_cases(name: str, gen):
    n_items = 1000
    env = {"popularity": gen.poisson(20, size=n_items).astype(float)} if name == "popularity" else {}
    policy = make(name, context_dim=32, item_dim=8, n_items=n_items, **env)
    if name == "bernoulli-ts":
        m = 2000
        policy.update(
            gen.normal(size=(m, 32)),
            gen.normal(size=(m, 8)),
            gen.binomial(1, 0.1, size=m).astype(float),
            items=gen.integers(0, n_items, size=m),
        )
    items = gen.choice(n_items, N_CAND, replace=False)
    request = Request(context=gen.normal(size=32), items=items, item_features=gen.normal(size=(N_CAND, 8)))
    g = rng(60)
    if name == "bernoulli-ts":
        a, b = policy.posterior(items)
        return policy, request, (lambda: g.beta(a, b)), "one posterior draw: rng.beta(a, b) over the candidates"
    if name == "uniform":
        return policy, request, (lambda: g.choice(N_CAND, N_SLOTS, replace=False)), "rng.choice(200, 10)"
    scores = policy.scores(request)
    table_ = np.zeros(n_items)
    table_[items] = scores
    return policy, request, (lambda: table_[items]), "the score gather table[items]"


def _vw_cases(name: str, gen):
    import vw_bench

    from banditrec.policies.vw import VWCCBConfig, VWConditionalContextualBandit, VWConfig, VWContextualBandit

    catalog = gen.normal(size=(vw_bench.N_ITEMS, vw_bench.ITEM_DIM))
    theta = gen.normal(scale=0.3, size=(vw_bench.ITEM_DIM, vw_bench.CONTEXT_DIM))
    if name == "vw-cb":
        policy = vw_bench.trained(VWContextualBandit(VWConfig()), rng(41), catalog, theta)
    else:
        policy = vw_bench.trained(VWConditionalContextualBandit(VWCCBConfig()), rng(42), catalog, theta)
    ctx = gen.normal(size=vw_bench.CONTEXT_DIM)
    feats = catalog[gen.choice(vw_bench.N_ITEMS, N_CAND, replace=False)]
    request = Request(context=ctx, items=np.arange(N_CAND), item_features=feats)
    if name == "vw-cb":
        lines = policy.example(ctx, feats)
    else:
        seeds = rng(44).integers(0, 2**63, size=N_SLOTS)
        lines = policy.example(ctx, feats, [f"ccb slot 'seed={s} |Slot s={k}" for k, s in enumerate(seeds.tolist())])
    ws = policy._ws()
    return policy, request, (lambda: ws.predict(lines)), "Workspace.predict(lines), one call"


def bench_request_path(cfg: dict, run) -> None:
    gen = rng(50)
    sampler = rng(51)
    budget = 3.0 * cfg["decide"] / run.FULL["decide"]  # seconds of timed calls per policy
    rows, met, missed = [], [], []
    with run.blas_threads(1) as threads:
        for name in REGISTRY:
            if name in ("vw-cb", "vw-ccb"):
                policy, request, bare, formula = _vw_cases(name, gen)
            elif name in ("uniform", "popularity", "bernoulli-ts"):
                policy, request, bare, formula = _catalog_cases(name, gen)
            else:
                policy, request, bare, formula = _ridge_cases(name, gen, run)
            drawn = policy.distribution(request, N_SLOTS, MIN_EPSILON)

            def draw(policy=policy, request=request):
                return policy.distribution(request, N_SLOTS, MIN_EPSILON).draw(sampler)

            def eager(policy=policy, request=request):
                return policy.distribution(request, N_SLOTS, MIN_EPSILON).sample(sampler)

            def complete(policy=policy, request=request):  # a fresh distribution: nothing cached
                dist = policy.distribution(request, N_SLOTS, MIN_EPSILON)
                return dist.complete(dist.draw(sampler))

            probe = compare({"a": bare, "d": draw, "s": eager}, repeats=2, warmup=1, rounds=1)
            fast = probe["a"].p50 + probe["d"].p50
            reps = int(min(cfg["decide"], max(20, budget / 2 / (fast / 1e9))))
            t = compare({"a": bare, "d": draw}, repeats=reps)
            slow_reps = int(min(reps, max(3, budget / 2 / (probe["s"].p50 / 1e9))))
            t_slow = compare({"s": eager, "c": complete}, repeats=slow_reps, warmup=1)
            pending = drawn.draw(sampler).pending
            ok = t["d"].p50 / 1e3 <= TARGET_US
            (met if ok else missed).append(f"{name} {us(t['d'].p50)} us")
            rows.append(
                [
                    name,
                    formula,
                    us(t["a"].p50),
                    us(t["d"].p50),
                    us(t["d"].p99),
                    f"{t['d'].p50 / t['a'].p50:,.2f}x",
                    us(t_slow["s"].p50),
                    us(t_slow["c"].p50) if pending else "nothing deferred",
                    "yes" if ok else "NO",
                ]
            )
    blas = f"numpy's OpenBLAS pinned to {threads} thread" if threads else "BLAS threads as configured"
    table(
        "requestpath",
        f"Every registered policy, one decision of {N_SLOTS} slots over {N_CAND} candidates in process, min_epsilon "
        f"{MIN_EPSILON}: the ridge family at bench decide's d=32 size (context 32, item features 8, trained on "
        "2,000 rows), bernoulli-ts/uniform/popularity on 1,000 items, VW at bench vw's size after 300 learned "
        f"decisions; default mc_draws. {blas}. (a) the bare computation; draw = distribution().draw(rng), what a "
        "serving engine does per request (Engine.defer_marginals); eager = distribution().sample(rng), the same "
        "slate with every Monte-Carlo value computed; complete = what draw leaves for the background (a fresh "
        "distribution's draw + complete). p50 in microseconds; draw and (a) interleaved in one run, eager and "
        "complete in another.",
        [
            "policy",
            "(a) bare computation",
            "(a) p50",
            "draw p50",
            "draw p99",
            "draw/(a)",
            "eager p50",
            "complete p50",
            f"draw <= {TARGET_US / 1e3:g} ms",
        ],
        rows,
    )
    print(
        f"target, every policy's request path <= 1 ms p50: met by {len(met)} of {len(met) + len(missed)}"
        + (f"; missed: {'; '.join(missed)}" if missed else "")
    )


GROWTH_POLICIES = ("linucb", "softmax", "lints")
GROWTH_CANDIDATES = (50, 100, 200, 400, 800)
GROWTH_SLOTS = (1, 2, 5, 10, 20)


def bench_growth(cfg: dict, run) -> None:
    """The request path's cost against candidates (50 -> 800, 10 slots) and slots (1 -> 20, 200
    candidates), beside the bare scoring of the same candidates in the same run."""
    gen = rng(70)
    sampler = rng(71)
    reps = max(30, cfg["decide"] // 25)
    rows = []
    with run.blas_threads(1):
        for name in GROWTH_POLICIES:
            policy = run.d32_policy(name, gen)
            sizes = [(n, 10) for n in GROWTH_CANDIDATES] + [(200, k) for k in GROWTH_SLOTS if k != 10]
            for n, k in sorted(sizes):
                items = gen.choice(run.D32_ITEMS, n, replace=False)
                request = Request(
                    context=gen.normal(size=run.D32_CONTEXT),
                    items=items,
                    item_features=gen.normal(size=(n, run.D32_ITEM)),
                )
                score, _ = run.bare_scoring(policy, request, gen)
                features = run.bare_features(request)

                def bare(score=score, features=features):
                    features()
                    return score()

                def draw(request=request, k=k, policy=policy):
                    return policy.distribution(request, k, MIN_EPSILON).draw(sampler)

                t = compare({"a": bare, "d": draw}, repeats=reps)
                rows.append(
                    [
                        name,
                        n,
                        k,
                        us(t["a"].p50),
                        us(t["d"].p50),
                        f"{t['d'].p50 / t['a'].p50:,.2f}x",
                        f"{t['d'].p50 / n:,.2f}",
                    ]
                )
    table(
        "requestpath growth",
        f"The request path (distribution().draw(rng), Monte-Carlo values deferred) as the work grows: candidates "
        f"50 -> 800 at 10 slots, slots 1 -> 20 at 200 candidates; bench decide's d=32 models; the bare scoring of the "
        f"same candidates (joint features included) measured in the same run as the floor; {reps} calls each.",
        ["policy", "candidates", "slots", "bare p50 us", "draw p50 us", "draw / bare", "draw ns per candidate"],
        rows,
    )
