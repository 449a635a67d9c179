"""Shared helpers for bench/run.py: seeded Generators, one timing helper, plain-text tables."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import glob
import os
import time
from dataclasses import dataclass

import numpy as np

SEED = 20240601


def rng(stream: int) -> np.random.Generator:
    """A Generator for one named stream of the benchmark: same numbers on every run."""
    return np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(stream,)))


@dataclass(frozen=True)
class Timing:
    """Per-call timings in nanoseconds (each sample is the mean of ``number`` back-to-back calls)."""

    ns: np.ndarray

    @property
    def p50(self) -> float:
        return float(np.median(self.ns))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.ns, 99))

    @property
    def per_second(self) -> float:
        return 1e9 / self.p50


def _block(fn, count: int, number: int) -> np.ndarray:
    clock = time.perf_counter_ns
    out = np.empty(count)
    if number == 1:
        for i in range(count):
            t0 = clock()
            fn()
            out[i] = clock() - t0
    else:
        loop = range(number)
        for i in range(count):
            t0 = clock()
            for _ in loop:
                fn()
            out[i] = (clock() - t0) / number
    return out


def compare(
    cases: dict, *, repeats: int, number: int = 1, warmup: int | None = None, rounds: int = 5
) -> dict[str, Timing]:
    """Time every case ``repeats`` times, interleaved in ``rounds`` blocks.

    Interleaving spreads a noisy neighbour's bursts over all cases instead of one. Each case
    is warmed up first; the garbage collector is off while timing (as in :mod:`timeit`).
    """
    warmup = max(1, repeats // 20) if warmup is None else warmup
    for fn in cases.values():
        _block(fn, warmup, number)
    rounds = max(1, min(rounds, repeats))
    sizes = np.diff(np.linspace(0, repeats, rounds + 1).astype(int))
    samples: dict[str, list[np.ndarray]] = {name: [] for name in cases}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for size in sizes:
            for name, fn in cases.items():
                samples[name].append(_block(fn, int(size), number))
    finally:
        if enabled:
            gc.enable()
    return {name: Timing(np.concatenate(parts)) for name, parts in samples.items()}


class FactoredScores:
    """Shared LinUCB's scores as bare numpy through the per-request quadratic form: with
    ``e = [1, c]`` the joint features are ``x = M(c) v``, so ``x^T A^-1 x = v^T B v`` with
    ``B = sum_kl e_k e_l Q[k, l]`` (``Q`` the d_i x d_i blocks of ``A^-1``, rearranged here once
    per model) and ``x^T theta = v^T (e @ T)``. ``scores(c, V)``: one request's scores."""

    def __init__(self, A_inv: np.ndarray, theta: np.ndarray, alpha: float, dc: int, di: int):
        idx = np.empty((dc + 1, di), dtype=np.intp)
        idx[0] = np.arange(di)
        idx[1:] = di + np.arange(di)[None, :] * dc + np.arange(dc)[:, None]  # position of e_k v_i in x
        self.k, self.di, self.alpha = dc + 1, di, alpha
        self.Q = np.ascontiguousarray(A_inv[idx[:, None, :, None], idx[None, :, None, :]].reshape(self.k, -1))
        self.T = theta[idx]

    def scores(self, c: np.ndarray, V: np.ndarray) -> np.ndarray:
        return self.scores_e(np.r_[1.0, c], V)

    def scores_e(self, e: np.ndarray, V: np.ndarray) -> np.ndarray:
        """The same for ``e = [1, c]`` built beforehand."""
        B = (e @ (e @ self.Q).reshape(self.k, self.di * self.di)).reshape(self.di, self.di)
        return V @ (e @ self.T) + self.alpha * np.sqrt(np.einsum("ij,ij->i", V @ B, V))


def status_mb(field: str) -> float:
    """A field of /proc/self/status in MB (``VmHWM``: this process's peak resident set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def us(ns: float) -> str:
    return f"{ns / 1e3:,.1f}"


def ms(ns: float) -> str:
    return f"{ns / 1e6:,.2f}"


def rate(x: float) -> str:
    return f"{x:,.0f}"


def ratio(x: float, of: float) -> str:
    return f"{x / of:,.2f}x"


def table(title: str, note: str, header: list[str], rows: list[list]) -> None:
    """Print a fixed-width table: first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))

    print(f"\n== {title} ==")
    print(note)
    print(line(cells[0]))
    print("-" * len(line(cells[0])))
    for r in cells[1:]:
        print(line(r))


def _numpy_openblas():
    """``(set, get)`` of numpy's bundled OpenBLAS thread count (ctypes), or None if not found."""
    import numpy

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    getter.restype = ctypes.c_int
                    return setter, getter
    return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with numpy's OpenBLAS (and scipy's, with threadpoolctl) on ``n`` threads;
    yields the count in force, or None when the library's controls were not found (then nothing
    is changed). On a small machine
    with other work running, threaded BLAS calls wait for CPU time slices (a small matrix
    product can take many times longer threaded than single-threaded), which says nothing
    about the code being timed."""
    found = _numpy_openblas()
    if found is None:
        yield None
        return
    setter, getter = found
    before = getter()
    setter(ctypes.c_int(n))
    try:
        from threadpoolctl import threadpool_limits  # scipy's own OpenBLAS too, where installed
    except ImportError:
        threadpool_limits = None
    try:
        if threadpool_limits is None:
            yield getter()
        else:
            with threadpool_limits(limits=n, user_api="blas"):
                yield getter()
    finally:
        setter(ctypes.c_int(before))
