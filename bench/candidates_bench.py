"""bench section ``candidates``: item-item neighbours at 1,000,000 interactions over 50,000 items,
banditrec's ItemItemCF beside the ``implicit`` library's item-item recommenders on the same data.

Data (seeded numpy Generator, stream 40): users' interaction counts are heavy-tailed
(``1 + floor(3 * Pareto(1.2))``, capped at 2,000: most users have a handful, a few have
thousands); each interaction picks an item by a Zipf(1.0) popularity over randomly permuted
item ids. Repeat picks are summed into counts, so the user x item ``csr_matrix`` holds fewer
nonzeros than interactions (its nnz is printed).

Every (library, weighting, threads) case runs in its own subprocess: the data is loaded from
an ``.npz``, the build is timed ``reps`` times (median shown), and the process's peak resident
memory is the kernel's high-water mark of its resident set, ``VmHWM`` in /proc/self/status (so it
includes Python, the library and the data; the resident size just before the first build is
printed beside it in brackets). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the
resident size the parent had at fork() over exec() into it, so a small child of a big parent
reports the parent's size (seen here: every case read the same figure).
implicit (a banditrec dependency, for the latent factors) runs in its own process from the same
venv.

Neighbour overlap, per item with any neighbour: |ours & theirs| / K_i, K_i = the longer of the
two lists (at most K), self left out of both (implicit keeps the item itself among its K, so it
is asked for K + 1 and the item dropped; then its best K are kept, ties by lower id). Ties at
the cut are counted fairly: an item of one list missing from the other counts as shared when
its score equals the other list's K-th score within 1e-9 (relative), i.e. either library could
have kept it; at most as many such swaps as the shorter side of the difference. "strict" gives
no such credit. The mean is over items with a neighbour in either list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from common import status_mb

BENCH = Path(__file__).resolve().parent
IMPLICIT_PYTHON = Path(sys.executable)  # implicit is a dependency: the same venv as banditrec
TIE_RTOL = 1e-9
TARGET_RATIO, TARGET_OVERLAP = 1.5, 0.99


def interactions(n_events: int, n_items: int, gen: np.random.Generator) -> sp.csr_matrix:
    """A (users, items) csr of summed interaction counts: heavy-tailed users, Zipf items."""
    per_user = np.minimum(np.floor(gen.pareto(1.2, size=n_events) * 3 + 1).astype(np.int64), 2000)
    ends = np.cumsum(per_user)
    n_users = int(np.searchsorted(ends, n_events)) + 1
    per_user = per_user[:n_users]
    per_user[-1] -= ends[n_users - 1] - n_events
    p = np.arange(1, n_items + 1, dtype=float) ** -1.0
    items = gen.permutation(n_items)[
        np.minimum(np.searchsorted(np.cumsum(p / p.sum()), gen.random(n_events)), n_items - 1)
    ]
    X = sp.csr_matrix((np.ones(n_events), (np.repeat(np.arange(n_users), per_user), items)), shape=(n_users, n_items))
    X.sum_duplicates()
    return X


def _padded(S: sp.csr_matrix, k: int, drop_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of each row's best ``k`` (score desc, id asc), self dropped, -1 / nan padded."""
    S = S.tocsr()
    rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
    keep = S.indices != rows if drop_self else np.ones(S.nnz, dtype=bool)
    rows, cols, vals = rows[keep], S.indices[keep], S.data[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    ok = rank < k
    ids = np.full((S.shape[0], k), -1, dtype=np.int64)
    scores = np.full((S.shape[0], k), np.nan)
    ids[rows[ok], rank[ok]] = cols[ok]
    scores[rows[ok], rank[ok]] = vals[ok]
    return ids, scores


def child(spec: dict) -> dict:
    """One case in this process: build ``reps`` times, save the last neighbours, report."""
    z = np.load(spec["data"])
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    k, reps, lib, weighting = spec["k"], spec["reps"], spec["lib"], spec["weighting"]
    out = {"base_mb": 0.0}
    if lib == "implicit":
        import implicit
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

        cls = {"cosine": CosineRecommender, "tfidf": TFIDFRecommender, "bm25": BM25Recommender}[weighting]
        out["version"] = implicit.__version__

        def build():
            m = cls(K=k + 1, num_threads=spec["threads"])  # 0: implicit's default, every core
            m.fit(X, show_progress=False)
            return m.similarity

        drop_self = True
    else:
        sys.path.insert(0, str(BENCH.parent))
        from banditrec.candidates import ItemItemCF

        threads = spec["threads"] or None  # None: banditrec's default, every usable core
        if lib == "banditrec-update":
            n_new = spec["new_rows"]
            old, new = X[:-n_new], X[-n_new:]

            def build():  # a fitted model per repeat (update changes it); only update() timed
                cf = ItemItemCF(k, keep_gram=True).fit(old, num_threads=threads)
                t0 = time.perf_counter()
                cf.update(new)
                out.setdefault("update_s", []).append(time.perf_counter() - t0)
                return cf.similarity
        else:

            def build():
                return (
                    ItemItemCF(k, weighting=weighting, keep_gram=lib == "banditrec-gram")
                    .fit(X, num_threads=threads)
                    .similarity
                )

        drop_self = False
    out["base_mb"] = status_mb("VmRSS")
    times = []
    for _i in range(spec.get("warmup", 0) + reps):
        t0 = time.perf_counter()
        S = build()
        times.append(time.perf_counter() - t0)
    out["seconds"] = out.pop("update_s", times)[spec.get("warmup", 0) :]
    out["peak_mb"] = status_mb("VmHWM")
    ids, scores = _padded(S, k, drop_self)
    np.savez(spec["out"], ids=ids, scores=scores)
    return out


def run_child(python: str, spec: dict) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    proc = subprocess.run([python, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['lib']} {spec['weighting']} exited {proc.returncode}: {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    z = np.load(spec["out"])
    r["ids"], r["scores"] = z["ids"], z["scores"]
    return r


def overlap(a_ids, a_sc, b_ids, b_sc) -> tuple[float, float, int]:
    """(tie-aware mean overlap, strict mean overlap, items compared); see the module docstring."""
    n, k = a_ids.shape
    la, lb = (a_ids >= 0).sum(axis=1), (b_ids >= 0).sum(axis=1)
    size = np.maximum(la, lb)
    rows = np.repeat(np.arange(n), k)
    key_a = np.where(a_ids >= 0, np.arange(n)[:, None] * n + a_ids, -1).ravel()
    key_b = np.where(b_ids >= 0, np.arange(n)[:, None] * n + b_ids, -1).ravel()
    in_b = np.isin(key_a, key_b[key_b >= 0]) & (key_a >= 0)
    in_a = np.isin(key_b, key_a[key_a >= 0]) & (key_b >= 0)
    shared = np.bincount(rows[in_b], minlength=n)
    cut_a = np.where(la > 0, a_sc[np.arange(n), np.maximum(la - 1, 0)], np.inf)
    cut_b = np.where(lb > 0, b_sc[np.arange(n), np.maximum(lb - 1, 0)], np.inf)

    def tied(sc, cut, valid):  # scores within TIE_RTOL of the other list's K-th score
        s = sc.ravel()
        c = cut[rows]
        return valid & (np.abs(s - c) <= TIE_RTOL * np.maximum(np.abs(c), 1e-300))

    only_a = np.bincount(rows[tied(a_sc, cut_b, (key_a >= 0) & ~in_b)], minlength=n)
    only_b = np.bincount(rows[tied(b_sc, cut_a, (key_b >= 0) & ~in_a)], minlength=n)
    # a swap needs a full other list: if it is shorter than K, nothing was cut there
    swaps = np.where((la == k) & (lb == k), np.minimum(only_a, only_b), 0)
    m = size > 0
    return (float(np.mean((shared[m] + swaps[m]) / size[m])), float(np.mean(shared[m] / size[m])), int(m.sum()))


def bench_candidates(cfg: dict, tmp) -> None:
    from common import rng, table

    c = cfg["candidates"]
    k, reps = c["k"], c["reps"]
    X = interactions(c["events"], c["items"], rng(40))
    tmp = Path(tmp or tempfile.mkdtemp())
    data = tmp / "user_items.npz"
    np.savez(data, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape))
    n_new = int(np.searchsorted(np.cumsum(X.sum(axis=1).A.ravel()[::-1]), 0.01 * c["events"])) + 1
    have_implicit = importlib.util.find_spec("implicit") is not None
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def case(lib, weighting, threads, python=sys.executable, reps=1, warmup=1, **extra):
        spec = dict(
            data=str(data),
            out=str(tmp / f"{lib}-{weighting}-{threads}.npz"),
            lib=lib,
            weighting=weighting,
            threads=threads,
            k=k,
            reps=reps,
            warmup=warmup,
            **extra,
        )
        return run_child(python, spec)

    def rounds(weighting, threads):
        """``reps`` rounds, each a fresh process per library (one warm-up build, one timed),
        the libraries alternating, so a busy spell of the machine hits both alike."""
        runs = {"banditrec": [], "implicit": []}
        for _ in range(reps):
            runs["banditrec"].append(case("banditrec", weighting, threads))
            if have_implicit:
                runs["implicit"].append(case("implicit", weighting, threads, python=str(IMPLICIT_PYTHON)))
        merged = {}
        for lib, rs in runs.items():
            if rs:
                merged[lib] = dict(
                    rs[-1],
                    seconds=[t for r in rs for t in r["seconds"]],
                    peak_mb=max(r["peak_mb"] for r in rs),
                    base_mb=max(r["base_mb"] for r in rs),
                )
        return merged

    plan = [("cosine", 0), ("cosine", 1), ("tfidf", 0), ("bm25", 0)]
    rows, ours_cos = [], None
    version = None
    for weighting, threads in plan:
        both = rounds(weighting, threads)
        ours = both["banditrec"]
        if weighting == "cosine" and threads == 0:
            ours_cos = ours
        label = f"{weighting}, {'default threads (' + str(ncpu) + ')' if threads == 0 else '1 thread'}"
        t_ours = float(np.median(ours["seconds"]))
        if have_implicit:
            theirs = both["implicit"]
            version = theirs["version"]
            t_theirs = float(np.median(theirs["seconds"]))
            tie, strict, n_cmp = overlap(ours["ids"], ours["scores"], theirs["ids"], theirs["scores"])
            r = t_ours / t_theirs
            rows.append(
                [
                    label,
                    f"{t_ours:.2f}",
                    f"{t_theirs:.2f}",
                    f"{r:.2f}x",
                    f"{tie:.4f}",
                    f"{strict:.4f}",
                    f"{ours['peak_mb']:,.0f} ({ours['base_mb']:,.0f})",
                    f"{theirs['peak_mb']:,.0f} ({theirs['base_mb']:,.0f})",
                ]
            )
        else:
            rows.append(
                [label, f"{t_ours:.2f}", "-", "-", "-", "-", f"{ours['peak_mb']:,.0f} ({ours['base_mb']:,.0f})", "-"]
            )
    gram = case("banditrec-gram", "cosine", 0, reps=c["update_reps"], warmup=0)
    upd = case("banditrec-update", "cosine", 0, reps=c["update_reps"], warmup=0, new_rows=n_new)
    t_gram, t_upd, t_fit = (float(np.median(x["seconds"])) for x in (gram, upd, ours_cos))
    same, _, _ = overlap(upd["ids"], upd["scores"], gram["ids"], gram["scores"])
    rows.append(
        [
            "cosine, fit(keep_gram=True)",
            f"{t_gram:.2f}",
            "",
            f"{t_gram / t_fit:.2f}x vs fit",
            "",
            "",
            f"{gram['peak_mb']:,.0f} ({gram['base_mb']:,.0f})",
            "",
        ]
    )
    rows.append(
        [
            f"cosine, update({n_new:,} new rows, 1%)",
            f"{t_upd:.2f}",
            "",
            f"{t_upd / t_gram:.2f}x vs refit",
            f"{same:.4f}",
            "",
            f"{upd['peak_mb']:,.0f} ({upd['base_mb']:,.0f})",
            "",
        ]
    )
    who = f"implicit {version}" if have_implicit else "implicit not run"
    note = (
        f"{c['events']:,} interactions over {c['items']:,} items ({X.shape[0]:,} users, {X.nnz:,} nonzeros after "
        f"summing repeats), K={k} neighbours, {who}; median of {reps} rounds, seconds: each round a fresh "
        "process per library,\none warm-up build then one timed, the libraries alternating "
        f"(update rows: {c['update_reps']} builds in one process).\nratio = banditrec / implicit "
        f"(goal <= {TARGET_RATIO}x for cosine); overlap = mean |ours & "
        f"theirs| / K per item, self excluded, ties at the cut credited (strict: none; goal >= {TARGET_OVERLAP}"
        " for cosine);\npeak MB = VmHWM, that process's peak resident set (resident MB before the "
        "first build in brackets). "
        "implicit's TFIDFRecommender normalises the tf-idf columns\n(cosine of tf-idf vectors) and banditrec's "
        "tfidf is the documented plain dot product W^T W, so their neighbours differ by design.\n"
        "update: ItemItemCF(keep_gram=True) fitted on the other 99% of rows, then update() with the last users "
        "(1% of interactions);\nits ratio is to fit(keep_gram=True) on all rows, its overlap is with that refit "
        "(1.0000 = the same neighbours)."
    )
    if not have_implicit:
        note += "\n(implicit peer skipped: implicit is not installed; `make install` installs it)"
    table(
        "candidates",
        note,
        ["case", "banditrec s", "implicit s", "ratio", "overlap", "strict", "banditrec peak MB", "implicit peak MB"],
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        sys.path.insert(0, str(BENCH))
        bench_candidates({"candidates": dict(events=50_000, items=5_000, k=50, reps=3, update_reps=3)}, None)
