"""bench section ``vw``: one decision of the Vowpal Wabbit policies beside the bare VW call they wrap.

200 candidates, 10 slots, context of 32, item features of 8 (``-q UA``: 256 crossed features
per candidate), after 300 learned decisions. Every VW row uses the policy's own workspace and
the exact lines the policy builds, so the peers do the same work in VW.

vw-cb:
  (a)  bare ``Workspace.predict(lines)`` on lines built beforehand (the public API: VW parses
       the text and finishes the examples);
  (a') the same through the private ``pylibvw`` calls (VW-NOTES 9), a ceiling: the policy does
       not use it (it would be pinned to 9.11.9 and need its own equivalence test);
  (b)  ``policy.distribution(request, 10, 0.01)``: input checks, the lines (item lines from the
       policy's cache), one predict, the Plackett-Luce slate -- what the policy adds to (a);
  (b') (b) with the item-line cache emptied before every call: formatting 200 lines;
  (c)  ``distribution(...).sample(rng)``, the whole decision: the marginals of slots 1..9 are
       Rao-Blackwellised Monte Carlo over ``draws`` prefixes in ``sampling.PlackettLuceSlate``;
  (c') (c) with draws=32; (d) that sampler alone on the same PMF, no VW.
vw-ccb (VW samples the slate; draws=32 extra predicts estimate the marginals):
  (e)  bare ``Workspace.predict`` of the ccb lines (10 slot lines with tag seeds);
  (f)  ``distribution(...).sample(rng)``: 1 + 32 ccb predicts.
"""

from __future__ import annotations

import numpy as np
import pylibvw
from common import compare, ratio, rng, table, us

from banditrec.policies import Request
from banditrec.policies.sampling import PlackettLuceSlate
from banditrec.policies.vw import VWCCBConfig, VWConditionalContextualBandit, VWConfig, VWContextualBandit

N_CAND, N_SLOTS, CONTEXT_DIM, ITEM_DIM, N_ITEMS = 200, 10, 32, 8, 2000
MIN_EPSILON = 0.01
TRAIN_DECISIONS = 300


def trained(policy, gen: np.random.Generator, catalog: np.ndarray, theta: np.ndarray):
    """``policy`` after serving and learning TRAIN_DECISIONS decisions of 200 candidates, where
    a click's probability grows with context x item features (a logistic of a bilinear form)."""
    for _ in range(TRAIN_DECISIONS):
        ctx = gen.normal(size=CONTEXT_DIM)
        feats = catalog[gen.choice(N_ITEMS, N_CAND, replace=False)]
        req = Request(context=ctx, items=np.arange(N_CAND), item_features=feats)
        draw = policy.distribution(req, 1, MIN_EPSILON).sample(gen)
        p_click = 1.0 / (1.0 + np.exp(-(feats[draw.index] @ theta @ ctx)))
        reward = (gen.random(1) < p_click).astype(float)
        kw = (
            {"propensity": draw.propensity, "slot": np.zeros(1, dtype=np.int64)}
            if isinstance(policy, VWConditionalContextualBandit)
            else {"pscore": draw.marginal}
        )
        policy.update(ctx[None, :], feats[draw.index], reward, candidates=[feats], chosen=draw.index, **kw)
    return policy


def fast_predict(vw, lines: list[str]):
    """VW-NOTES 9: the private path under ``Workspace.predict`` (parse, predict, finish)."""
    examples = vw._parse("\n".join(lines))
    pylibvw.vw.predict_multi(vw, examples)
    out = examples[0].get_action_scores()
    pylibvw.vw._finish_example_multi_ex(vw, examples)
    return out


def bench_vw(cfg: dict, tmp) -> None:
    gen = rng(40)
    catalog = gen.normal(size=(N_ITEMS, ITEM_DIM))
    theta = gen.normal(scale=0.3, size=(ITEM_DIM, CONTEXT_DIM))
    cb = trained(VWContextualBandit(VWConfig()), rng(41), catalog, theta)
    cb32 = VWContextualBandit(VWConfig(draws=32))
    cb32.set_state(*cb.state())
    ccb = trained(VWConditionalContextualBandit(VWCCBConfig()), rng(42), catalog, theta)

    ctx = gen.normal(size=CONTEXT_DIM)
    feats = catalog[gen.choice(N_ITEMS, N_CAND, replace=False)]
    request = Request(context=ctx, items=np.arange(N_CAND), item_features=feats)
    lines = cb.example(ctx, feats)
    vw = cb._ws()
    pmf = np.asarray(vw.predict(lines))
    # the peers compute what the policy computes, before anything is timed
    assert fast_predict(vw, lines) == vw.predict(lines)
    assert np.array_equal(cb.distribution(request, N_SLOTS).values, pmf) and np.array_equal(cb32.pmf(request), pmf)
    eps = np.full(N_SLOTS, MIN_EPSILON)
    sampler = rng(43)

    def cold():
        cb._lines._cache.clear()
        return cb.distribution(request, N_SLOTS, MIN_EPSILON)

    reps = max(20, cfg["decide"] // 5)
    t = compare(
        {
            "a": lambda: vw.predict(lines),
            "a'": lambda: fast_predict(vw, lines),
            "b": lambda: cb.distribution(request, N_SLOTS, MIN_EPSILON),
            "b'": cold,
            "c": lambda: cb.distribution(request, N_SLOTS, MIN_EPSILON).sample(sampler),
            "c'": lambda: cb32.distribution(request, N_SLOTS, MIN_EPSILON).sample(sampler),
            "d": lambda: PlackettLuceSlate(pmf, eps).sample(sampler),
        },
        repeats=reps,
    )

    seeds = rng(44).integers(0, 2**63, size=N_SLOTS)
    ccb_lines = ccb.example(ctx, feats, [f"ccb slot 'seed={s} |Slot s={k}" for k, s in enumerate(seeds.tolist())])
    ccb_vw = ccb._ws()
    first = ccb_vw.predict(ccb_lines)
    assert len(first) == N_SLOTS and [len(s) for s in first] == list(range(N_CAND, N_CAND - N_SLOTS, -1))
    ccb_reps = max(3, cfg["decide"] // 200)
    t_ccb = compare(
        {
            "e": lambda: ccb_vw.predict(ccb_lines),
            "f": lambda: ccb.distribution(request, N_SLOTS, MIN_EPSILON).sample(sampler),
        },
        repeats=ccb_reps,
        warmup=1,
    )

    labels = {
        "a": ("(a) vw-cb bare Workspace.predict(lines)", t, "a"),
        "a'": ("(a') same, private pylibvw path (not used)", t, "a"),
        "b": ("(b) VWContextualBandit.distribution()", t, "a"),
        "b'": ("(b') (b), item-line cache emptied each call", t, "a"),
        "c": ("(c) distribution().sample(rng), draws=256", t, "a"),
        "c'": ("(c') same with draws=32", t, "a"),
        "d": ("(d) PlackettLuceSlate(pmf).sample, draws=256, no VW", t, "a"),
        "e": ("(e) vw-ccb bare Workspace.predict(lines)", t_ccb, "e"),
        "f": ("(f) vw-ccb distribution().sample(rng), draws=32", t_ccb, "e"),
    }
    rows = [
        [label, us(tt[k].p50), us(tt[k].p99), ratio(tt[k].p50, tt[peer].p50), f"({peer})"]
        for k, (label, tt, peer) in labels.items()
    ]
    table(
        "vw",
        f"One decision: {N_CAND} candidates, {N_SLOTS} slots, context {CONTEXT_DIM} x item {ITEM_DIM} "
        f"(-q UA), min_epsilon={MIN_EPSILON}, Vowpal Wabbit 9.11.9, epsilon explorer (0.05), after "
        f"{TRAIN_DECISIONS} learned decisions; {reps} calls each for (a)-(d), {ccb_reps} for (e)-(f) (p99 ~ max). "
        "(b) is what the policy adds to the VW call it wraps; (c)-(d): the Monte-Carlo marginals of "
        "PlackettLuceSlate dominate the decision; (f) costs 1 + draws ccb predicts.",
        ["case", "p50 us", "p99 us", "ratio", "vs"],
        rows,
    )
