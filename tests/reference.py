"""Slow, obvious reference implementations the fast paths are checked against."""

from __future__ import annotations

import numpy as np


def reference_slot_pmf(scores, eps_k, shown):
    """The slot rule stated plainly: epsilon spread uniformly over the remaining candidates,
    the rest shared evenly by the best remaining ones."""
    remaining = [j for j in range(len(scores)) if j not in shown]
    best = max(scores[j] for j in remaining)
    top = [j for j in remaining if scores[j] == best]
    pmf = np.zeros(len(scores))
    for j in remaining:
        pmf[j] += eps_k / len(remaining)
    for j in top:
        pmf[j] += (1 - eps_k) / len(top)
    return pmf


def reference_linucb_scores(A, b, alpha, X, sigma=1.0):
    """x^T A^{-1} b + alpha sigma sqrt(x^T A^{-1} x), with an explicit inverse."""
    A_inv = np.linalg.inv(A)
    theta = A_inv @ b
    return np.array([x @ theta + alpha * sigma * np.sqrt(x @ A_inv @ x) for x in X])


def reference_noise_sd(X, r, reg=1.0):
    """The ridge model's noise scale from its rows ``X (m, d)``, ``r (m,)``, written out: the
    residual sum of squares sum r^2 - theta . X^T r plus one prior row of variance
    (range / 2)^2 (range 1 until two different rewards), over m - (d - reg trace(A^-1)) + 1
    (at least 1); 0.5 with no rows."""
    d = X.shape[1]
    A = reg * np.eye(d) + X.T @ X
    c = X.T @ r
    spread = float(r.max() - r.min()) if len(r) and r.max() > r.min() else 1.0
    df = d - reg * np.trace(np.linalg.inv(A))
    return float(np.sqrt((r @ r - np.linalg.solve(A, c) @ c + spread**2 / 4) / (max(len(r) - df, 0.0) + 1.0)))


# ---- candidate generation: the dense computation the sparse fast paths are checked against ----


def reference_diversify(ids, scores, types, N, *, max_per_type, type_decay=0.7):
    """Per-type cap and spread over one user's items, with lexsorts over the whole list."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return np.empty(0, dtype=np.int64)
    t = np.asarray(types)[ids]
    order = np.lexsort((np.arange(len(ids)), -np.asarray(scores)))
    ts = t[order]
    by_type = np.lexsort((np.arange(len(order)), ts))
    first = np.r_[True, ts[by_type][1:] != ts[by_type][:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_type] = np.arange(len(order)) - start
    keep = rank < max_per_type
    adjusted = np.asarray(scores)[order] * type_decay**rank
    pos = order[keep]
    final = np.lexsort((np.arange(len(pos)), -adjusted[keep]))[:N]
    return pos[final]


def _dense_top(row, M):
    """``row`` with all but its M largest positive entries (ties: lower index) set to 0."""
    order = np.lexsort((np.arange(len(row)), -row))
    keep = order[:M][row[order[:M]] > 0]
    out = np.zeros_like(row)
    out[keep] = row[keep]
    return out


def _add_rows(table, seeds, n):
    """sum over seed items j (ascending) of weight_j x table row j, as a dense (n,) vector."""
    out = np.zeros(n)
    for j in sorted(seeds):
        out += seeds[j] * table[j].toarray().ravel()
    return out


def _weights(items, weights):
    d = {}
    for j, w in zip(np.asarray(items).tolist(), np.asarray(weights, dtype=float).tolist()):
        d[j] = d.get(j, 0.0) + w
    return d


def reference_candidates(gen, state, N, *, popularity, exclude=()):
    """A fitted CandidateGenerator's candidates for one user, computed densely over the whole
    catalog: every item's four components, the filters' full mask, the per-type back-off rows
    and the segment's popular row cut to their top lists by brute force, the cap and spread over
    every positive item, then the slots kept for new items. ``popularity``: the untruncated
    ``(S + 1, n)`` segment popularity the generator was fitted with."""
    n = gen.n_items
    cm = gen.complement_model
    cp = _weights(
        np.r_[state.cart, state.purchased], np.r_[np.ones(len(state.cart)), 0.7 ** np.arange(len(state.purchased))]
    )
    direct = _add_rows(cm.scores, cp, n)
    T = cm.type_transition.toarray()
    type_w = {}
    for j in sorted(cp):
        t = int(gen.types[j])
        type_w[t] = type_w.get(t, 0.0) + cp[j]
    backoff = np.zeros(n)
    for t in sorted(type_w):
        backoff += type_w[t] * _dense_top(T[t, gen.types] * cm.item_share, cm.n_backoff)
    comp = direct + cm.backoff * backoff
    ages = state.view_age_s
    vw = 0.5 ** (ages / gen.half_life_s) if ages is not None else 0.7 ** np.arange(len(state.viewed))
    sim = _add_rows(gen.substitutes, _weights(state.viewed, vw), n)
    if gen.meta_new is not None:
        every = np.r_[state.cart, state.purchased, state.viewed]
        new = _add_rows(gen.meta_new, _weights(every, np.ones(len(every))), n)
    else:
        new = np.zeros(n)
    last = len(popularity) - 1
    seg = state.segment if state.segment is not None and 0 <= state.segment < last else last
    pop = _dense_top(popularity[seg], gen.n_popular)
    extra = _reference_extra(gen, state, cp, vw, n)
    comps = np.stack([comp, sim, new, pop, *(np.zeros(n) if e is None else e for e in extra)])
    peak = comps.max(axis=1, keepdims=True)
    np.divide(comps, peak, out=comps, where=peak > 0)
    names = np.array(["complement", "similar", "new", "popular", "factors", "reorder", "accessory"], dtype=object)
    w = [gen.weights[k] for k in names]
    total = ((w[0] * comps[0] + w[1] * comps[1]) + w[2] * comps[2]) + w[3] * comps[3]
    for c in range(4, 7):
        if extra[c - 4] is not None:
            total = total + w[c] * comps[c]
    banned = gen.filters.banned(state, n) | ~gen.active
    banned[np.asarray(state.cart, dtype=np.int64)] = True
    banned[np.asarray(exclude, dtype=np.int64)] = True
    score = np.where(banned, 0.0, total)
    top = np.flatnonzero(score > 0)
    top = top[np.lexsort((top, -score[top]))]
    pick = top[
        reference_diversify(top, score[top], gen.types, N, max_per_type=gen.max_per_type, type_decay=gen.type_decay)
    ]
    if gen.min_new >= 1 and gen.meta_new is not None and gen.cold[pick].sum() < gen.min_new:
        have = int(gen.cold[pick].sum())
        cand = np.flatnonzero(gen.cold & ~banned & (score > 0))
        cand = cand[~np.isin(cand, pick)]
        counts = np.bincount(gen.types[pick], minlength=int(gen.types.max()) + 1)
        cand = cand[counts[gen.types[cand]] < gen.max_per_type]
        add = cand[np.argsort(-score[cand], kind="stable")[: min(gen.min_new - have, N)]]
        if len(add):
            pick = np.r_[pick, add] if len(pick) + len(add) <= N else np.r_[pick[: N - len(add)], add]
    source = names[np.argmax(comps[:, pick] * np.asarray(w)[:, None], axis=0)]
    if gen.quotas:
        pick, source = _reference_quotas(gen, pick, source, comps, score, N)
    return pick, score[pick], source


def _reference_extra(gen, state, cp, vw, n):
    """The dense factors, reorder and accessory components (None: the generator has none)."""
    out = [None, None, None]
    if gen.factors is not None:
        out[0] = np.zeros(n)
        seen = np.r_[state.cart, state.purchased, state.viewed]
        if len(seen):
            weights = np.r_[np.ones(len(state.cart)), 0.7 ** np.arange(len(state.purchased)), vw]
            ids, sc = gen.factors.recommend(seen, weights=weights, N=gen.n_source)
            keep = np.asarray(sc) > 0
            out[0][np.asarray(ids)[keep]] = np.asarray(sc, dtype=float)[keep]
    if gen.reorder is not None:
        out[1] = np.zeros(n)
        if state.user is not None and state.user >= 0 and state.now is not None:
            ids, sc = gen.reorder.candidates(
                state.user, state.now, gen.n_source, session_purchased=state.session_purchased
            )
            keep = np.asarray(sc) > 0
            out[1][np.asarray(ids)[keep]] = np.asarray(sc, dtype=float)[keep]
    if gen.accessory is not None:
        out[2] = _add_rows(gen.accessory, cp, n)
    return out


def _reference_quotas(gen, pick, source, comps, score, N):
    """The quota step over one user's picks, item by item: for each quota source in order, its
    first ``q`` members in the row (and ``min_new`` new items) are protected; a short row takes
    the source's best eligible items it lacks (type cap respected), dropping its lowest
    unprotected picks when full."""
    code = {k: c for c, k in enumerate(["complement", "similar", "new", "popular", "factors", "reorder", "accessory"])}
    pick, source = list(pick.tolist()), list(source.tolist())
    protected = [False] * len(pick)
    if gen.min_new >= 1 and gen.meta_new is not None:
        cold = [i for i, j in enumerate(pick) if gen.cold[j]][: gen.min_new]
        for i in cold:
            protected[i] = True
    for s, q in gen.quotas.items():
        c = code[s]
        if not comps[c].any() and not _has(gen, s):
            continue
        member = [i for i, j in enumerate(pick) if comps[c][j] > 0]
        for i in member[:q]:
            protected[i] = True
        need = q - len(member)
        if need <= 0:
            continue
        counts = {}
        for j in pick:
            counts[int(gen.types[j])] = counts.get(int(gen.types[j]), 0) + 1
        cand = [
            j
            for j in range(len(score))
            if score[j] > 0
            and comps[c][j] > 0
            and j not in pick
            and counts.get(int(gen.types[j]), 0) < gen.max_per_type
        ]
        cand.sort(key=lambda j: (-comps[c][j], j))
        free = [i for i in range(len(pick)) if not protected[i]]
        add = cand[: min(need, N - len(pick) + len(free))]
        if not add:
            continue
        drop = set(free[len(free) - max(0, len(pick) + len(add) - N) :]) if len(pick) + len(add) > N else set()
        keep = [i for i in range(len(pick)) if i not in drop]
        pick = [pick[i] for i in keep] + add
        source = [source[i] for i in keep] + [s] * len(add)
        protected = [protected[i] for i in keep] + [True] * len(add)
    return np.asarray(pick, dtype=np.int64), np.asarray(source, dtype=object)


def _has(gen, s):
    return {"factors": gen.factors, "reorder": gen.reorder, "accessory": gen.accessory}.get(s, True) is not None


def reference_cf_candidates(similarity, popularity, history, N, exclude=()):
    """ItemItemCF's list for one user, densely: summed similarity rows of the history, the
    history and ``exclude`` left out, positive scores by (score, lower index), then the most
    popular remaining items (ties by lower index)."""
    S = similarity.toarray() if hasattr(similarity, "toarray") else np.asarray(similarity)
    n = S.shape[0]
    score = np.zeros(n)
    for h in np.asarray(history, dtype=np.int64).tolist():
        score = score + S[h]
    banned = np.zeros(n, bool)
    banned[np.asarray(history, dtype=np.int64)] = True
    banned[np.asarray(exclude, dtype=np.int64)] = True
    cf = np.flatnonzero((score > 0) & ~banned)
    cf = cf[np.lexsort((cf, -score[cf]))][:N]
    taken = banned.copy()
    taken[cf] = True
    rest = [j for j in np.argsort(-np.asarray(popularity), kind="stable").tolist() if not taken[j]]
    fill = np.asarray(rest[: N - len(cf)], dtype=np.int64)
    return np.r_[cf, fill].astype(np.int64), np.r_[score[cf], np.zeros(len(fill))], len(cf)
