"""bench sections ``obd`` and ``rewardtruth``: banditrec's reward models, judged by the error
they give the direct method and the doubly robust family.

``obd``: the Open Bandit Dataset's small sample (``make obd``), Open Bandit Pipeline's protocol:
estimate the value of ZOZOTOWN's Bernoulli Thompson sampling policy ("all" campaign) from the
uniformly random log; the ground truth is the on-policy mean click of the BTS log. BTS's
action distribution is replicated as obp does: Beta draws from ZOZOTOWN's prior
(``prior_bts.yaml``), items ranked by their draw, the top 3 fill positions 1-3, frequencies
over Monte Carlo draws; the same for every round. Context = one-hot user features (first level
dropped, as obp). Every row is its own round (obp's policy value: mean reward per row).
Relative error = |estimate - truth| / truth; "full" on the whole log, "boot" the mean over
bootstrap resamples of the log (obp's ``sample_bootstrap_bandit_feedback``), each refitting
the reward model; folds hash the original row, so that a row drawn twice stays in one fold.

``rewardtruth``: the simulator knows the truth. (a) tests/banditrec/ope/test_ope_truth.py's world (position-
based clicks, ``theta_k * sigmoid(base + bias_a + pref_c . latent_a)``: a preference x item
interaction no additive model holds) with its two loggers; (b) a logistic world (tests/
test_reward_models.py), whose correctly specified model is a logistic regression.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
from common import rng, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.*
from banditrec.ope import DM, DR, IPS, SNDR, SNIPS, LoggedBandit, SwitchDR  # noqa: E402
from banditrec.ope.reward_model import GBTRewardModel, LogisticRewardModel, RidgeRewardModel, decision_folds  # noqa: E402
from tests.banditrec.ope.test_ope_truth import make_world, simulate_log  # noqa: E402
from tests.banditrec.ope.test_reward_models import logistic_log, logistic_world  # noqa: E402

OBD = Path(__file__).resolve().parent.parent / "data" / "obd"
N_ACTIONS, LEN_LIST = 80, 3
MODELS = {
    "ridge": RidgeRewardModel(),
    "logistic per slot": LogisticRewardModel(),
    "logistic pooled": LogisticRewardModel(per_slot=False),
    "gbt": GBTRewardModel(),
}
ESTIMATORS = {"DM": DM(), "DR": DR(), "SNDR": SNDR(), "SwitchDR": SwitchDR()}


# ---- the Open Bandit Dataset ---------------------------------------------------------------
def load_obd(root: Path, behavior: str, campaign: str = "all") -> dict:
    """One OBD log as arrays, rows in time order: item, position (0-based), click, propensity,
    one-hot user features (obp's ``pre_process``)."""
    with open(root / behavior / campaign / f"{campaign}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: r["timestamp"])
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    users = sorted(k for k in cols if k.startswith("user_feature"))
    blocks = []
    for k in users:
        levels = np.unique(cols[k])
        blocks.append((cols[k][:, None] == levels[None, 1:]).astype(float))  # drop_first, as pandas
    position = np.unique(cols["position"].astype(int), return_inverse=True)[1]
    return {
        "action": cols["item_id"].astype(np.int64),
        "slot": position,
        "reward": cols["click"].astype(float),
        "pscore": cols["propensity_score"].astype(float),
        "context": np.hstack(blocks),
    }


def bts_action_dist(alpha, beta, n_sim: int, gen: np.random.Generator, chunk: int = 10_000) -> np.ndarray:
    """(n_actions, len_list): P(item ranked at position k) when items are ranked by one Beta
    draw each, estimated from ``n_sim`` draws (obp's ``compute_batch_action_dist``)."""
    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    counts = np.zeros((len(alpha), LEN_LIST))
    for start in range(0, n_sim, chunk):
        m = min(chunk, n_sim - start)
        draws = gen.beta(alpha, beta, size=(m, len(alpha)))
        top = np.argsort(-draws, axis=1, kind="stable")[:, :LEN_LIST]
        for k in range(LEN_LIST):
            counts[:, k] += np.bincount(top[:, k], minlength=len(alpha))
    return counts / n_sim


def obd_q(model, data: LoggedBandit, dist: np.ndarray, keys: np.ndarray, seed: int):
    """Cross-fitted ``(q_logged, q_target)`` with folds hashed from ``keys`` (3 folds, as obp's
    examples), the target's per-row slot distribution ``dist[:, slot]``."""
    folds = model.fit_folds(data, n_folds=3, fold=decision_folds(keys, 3, seed))
    return model.predict_folds(folds, data, dist.T[data.slot])


def bench_obd(cfg: dict, tmp: Path) -> None:
    if not (OBD / ".done").exists():
        print(f"\n(obd skipped: {OBD} is missing; `make obd` downloads the Open Bandit Dataset's sample there)")
        return
    import yaml

    t0 = time.perf_counter()
    log = load_obd(OBD, "random")
    truth = float(load_obd(OBD, "bts")["reward"].mean())
    prior = yaml.safe_load((OBD / "prior_bts.yaml").read_text())["all"]
    dist = bts_action_dist(prior["alpha"], prior["beta"], cfg["obd_sims"], rng(40))
    n = len(log["reward"])
    base = dict(n_actions=N_ACTIONS, n_slots=LEN_LIST)
    full = LoggedBandit(**log, **base)
    keys = np.arange(n)
    results: dict[tuple[str, str], list[float]] = {}
    ips = {"IPS": IPS(), "SNIPS": SNIPS()}

    def run(data, sample_keys, seed, tag):
        pi_d = dist[data.action, data.slot]
        for name, est in ips.items():
            results.setdefault((name, tag), []).append(est.estimate(data, target_pscore=pi_d).value)
        for label, model in MODELS.items():
            q_logged, q_target = obd_q(model, data, dist, sample_keys, seed)
            for name, est in ESTIMATORS.items():
                v = est.estimate(data, target_pscore=pi_d, q_hat_logged=q_logged, q_hat_target=q_target).value
                results.setdefault((f"{name}, {label}", tag), []).append(v)

    run(full, keys, 0, "full")
    gen = rng(41)
    for b in range(cfg["obd_boot"]):
        idx = np.sort(gen.integers(0, n, size=n))
        sample = LoggedBandit(**{k: v[idx] for k, v in log.items()}, **base)
        run(sample, idx, b + 1, "boot")
    names = ["IPS", "SNIPS"] + [f"{e}, {m}" for e in ESTIMATORS for m in MODELS]
    rows = []
    for name in names:
        rel_full = abs(results[(name, "full")][0] - truth) / truth
        boot = np.abs(np.array(results[(name, "boot")]) - truth) / truth
        se = boot.std(ddof=1) / np.sqrt(len(boot))
        rows.append([name, f"{results[(name, 'full')][0]:.5f}", f"{rel_full:.3f}", f"{boot.mean():.3f} ± {se:.3f}"])
    table(
        "obd: reward models on the Open Bandit Dataset (BTS from the random log, 'all' campaign)",
        f"Ground truth: BTS on-policy mean click {truth:.5f} ({n:,} rows each log; 80 items, 3 positions). BTS "
        f"action distribution from {cfg['obd_sims']:,} draws of ZOZOTOWN's Beta prior. Relative error |est - "
        f"truth| / truth: 'full' on the whole random log; 'boot' the mean over {cfg['obd_boot']} bootstrap "
        f"resamples ± its standard error. Reward models cross-fitted with 3 folds; SwitchDR lambda 10. "
        f"{time.perf_counter() - t0:.0f} s.",
        ["estimator, reward model", "estimate", "rel. err full", "rel. err boot"],
        rows,
    )


# ---- the simulator's truth -------------------------------------------------------------------
def _summary(err: np.ndarray) -> list[str]:
    half = 1.96 * err.std(ddof=1) / np.sqrt(len(err))
    return [f"{err.mean():+.4f} ± {half:.4f}", f"{np.sqrt((err**2).mean()):.4f}"]


def bench_reward_truth(cfg: dict, tmp: Path) -> None:
    t0 = time.perf_counter()
    seeds = range(700, 700 + cfg["rm_seeds"])
    world = make_world()
    for logger in ("uniform", "popularity"):
        errs: dict[str, list[float]] = {}
        for seed in seeds:
            data, dist, _ = simulate_log(world, logger, cfg["rm_decisions"], seed)
            target_rows = dist[np.arange(data.n_rows), :, data.slot]
            pi = dist[np.arange(data.n_rows), data.action, data.slot]
            for label, model in MODELS.items():  # one cross-fit per model, shared by DM and DR
                q_logged, q_target = model.cross_fit(data, target_rows, n_folds=2, rng=np.random.default_rng(seed))
                for name, est in (("DM", DM()), ("DR", DR())):
                    v = est.estimate(data, target_pscore=pi, q_hat_logged=q_logged, q_hat_target=q_target).value
                    errs.setdefault(f"{name}, {label}", []).append(v - world.truth)
        rows = [[k, *_summary(np.array(v))] for k, v in errs.items()]
        table(
            f"rewardtruth: the position-based click world, {logger} logger",
            "tests/banditrec/ope/test_ope_truth.py's world (60 items, 200 customers, 3 slots; "
            "clicks theta_k * sigmoid(base + "
            f"bias_a + pref . latent_a)); exact truth {world.truth:.4f} clicks per carousel; "
            f"{len(seeds)} seeds x "
            f"{cfg['rm_decisions']:,} decisions. Error = estimate - truth: mean ± 95% CI, RMSE.",
            ["estimator, reward model", "bias", "RMSE"],
            rows,
        )
    lw = logistic_world()
    errs = {}
    for seed in seeds:
        data, dist = logistic_log(lw, cfg["rm_decisions"], seed)
        for label, model in {**MODELS, "logistic, true features": lw.true_model}.items():
            est = DM(reward_model=model, seed=seed)
            errs.setdefault(f"DM, {label}", []).append(est.estimate(data, dist).value - lw.truth)
    rows = [[k, *_summary(np.array(v))] for k, v in errs.items()]
    table(
        "rewardtruth: a logistic world (binary rewards, logistic truth)",
        f"tests/banditrec/ope/test_reward_models.py's world; exact truth {lw.truth:.4f}; {len(seeds)} seeds x "
        f"{cfg['rm_decisions']:,} decisions; {time.perf_counter() - t0:.0f} s for both tables.",
        ["estimator, reward model", "bias", "RMSE"],
        rows,
    )
