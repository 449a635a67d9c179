"""The learner: a process apart from serving that learns from closed decisions and publishes
snapshots the serving workers reload.

Each :meth:`Learner.step` reads the decisions whose reward window has closed, updates the
policy, saves a snapshot, switches the pointer atomically and registers the model in the log.

Details: docs/service.md, "The learner (`learner.py`)".
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import ValidationError
from .offline import learn_from_log
from .policies import Policy, load
from .policies.snapshot import read_manifest
from .publish import POINTER, resolve, write_pointer
from .store import DecisionLog
from .types import LoggedDecisions


@dataclass(frozen=True)
class Published:
    version: str
    manifest: Path
    sha256: str
    trained_until_seq: int
    n_rows: int


class Refresh(NamedTuple):
    """What a :attr:`Learner.refresh` hook returns when the learner should learn with something
    new from now on (a rebuilt shop: see :class:`banditrec.shop.ShopFollower`)."""

    policy: Policy
    item_features: np.ndarray  # (n_items, d_i)
    item_cold: np.ndarray | None = None  # (n_items,) bool; None: no item is cold


class Learner:
    """Learn ``policy`` from ``log`` (which must have a reward window) and publish to ``directory``.

    ``item_features (n_items, d_i)``: the catalog's features, by logged item index;
    ``item_cold (n_items,)``: which items are cold (no interactions yet; ``None``: none is), an
    input of the policies as when serving (:attr:`~banditrec.engine.ItemTable.cold`).
    """

    def __init__(
        self,
        log: DecisionLog | None,
        policy: Policy,
        item_features: np.ndarray,
        directory,
        *,
        kind: str = "click",
        default_reward: float = 0.0,
        keep: int = 5,
        clock=time.time,
        learned_seq: int = 0,
        item_cold: np.ndarray | None = None,
    ):
        if log is not None and log.reward_window_s is None:
            raise ValidationError(
                "the learner needs a log with a reward window: it learns only from decisions whose rewards are final",
                "reward_window_s",
            )
        self.log = log
        self.policy = policy
        self.item_features = np.asarray(item_features, dtype=float)
        self.item_cold = None if item_cold is None else np.asarray(item_cold, dtype=bool)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.default_reward = float(default_reward)
        self.keep = max(2, int(keep))
        self.clock = clock
        self.learned_seq = int(learned_seq)
        self.version: str | None = None
        # called before each step with the policy; returns None, or a Refresh to learn with from
        # now on (a rebuilt shop: see banditrec.shop.ShopFollower)
        self.refresh = None

    @classmethod
    def resume(cls, log, make_policy, item_features, directory, policy_env: dict, **kw) -> Learner:
        """A learner of ``log`` (what the class reads: a :class:`DecisionLog`, or a
        :class:`DatasetLearner`'s dataset directory) that continues from the snapshot
        :func:`banditrec.publish.resolve` chooses in ``directory`` (the one the serving workers
        serve), else from ``make_policy()``.
        Snapshots on disk none of which verifies raise: learning from scratch over them would
        hide the damage."""
        directory = Path(directory)

        def opener(path, manifest_sha256):
            return load(path, manifest_sha256=manifest_sha256, **policy_env)

        found = resolve(directory, opener)
        if found.source == "none":
            if found.refused or (directory / POINTER).exists():
                reasons = "; ".join(reason for _, reason in found.refused) or found.pointer_error
                raise ValidationError(
                    f"no snapshot in {directory} verifies: {reasons}; to learn from scratch, "
                    f"move its snapshots and {POINTER} away",
                    "snapshot",
                )
            return cls(log, make_policy(), item_features, directory, **kw)
        if found.pointer_error:
            logging.getLogger("banditrec.learner").warning(
                "resuming from the newest valid snapshot %s: %s", found.manifest, found.pointer_error
            )
        assert isinstance(found.value, Policy)  # what opener() loads (nothing is current, so it opened one)
        learner = cls(log, found.value, item_features, directory, learned_seq=found.trained_until_seq or 0, **kw)
        learner.version = found.version
        return learner

    def step(self) -> Published | None:
        """Learn from the newly closed decisions and publish; ``None`` when nothing closed."""
        if self.refresh is not None:
            update = self.refresh(self.policy)
            if update is not None:
                self.policy = update.policy
                self.item_features = np.asarray(update.item_features, dtype=float)
                self.item_cold = None if update.item_cold is None else np.asarray(update.item_cold, dtype=bool)
        found = self._closed()
        if found is None:
            return None
        logged, until = found
        n_rows = len(logged.row_reward)
        if n_rows:
            learn_from_log(self.policy, logged, self.item_features, cold=self.item_cold)
        self.learned_seq = until
        if not n_rows:  # only pinned slots closed: nothing learned, nothing to publish
            return None
        return self.publish(n_rows)

    def _closed(self) -> tuple[LoggedDecisions, int] | None:
        """The decisions closed since ``learned_seq`` and the seq learning reaches with them."""
        assert self.log is not None  # a Learner without a log is a DatasetLearner, which overrides this
        now = float(self.clock())
        until = self.log.closed_until_seq(after_seq=self.learned_seq, closed_before=now)
        if until <= self.learned_seq:
            return None
        logged = self.log.decisions(
            after_seq=self.learned_seq,
            until_seq=until,
            closed_before=now,
            kind=self.kind,
            default_reward=self.default_reward,
            training=True,
        )
        return logged, until

    def publish(self, n_rows: int = 0) -> Published:
        stem = f"{self.policy.model_version}-seq{self.learned_seq}"
        manifest_path = self.policy.save(self.directory / stem, provenance={"trained_until_seq": self.learned_seq})
        pointer = write_pointer(self.directory, manifest_path, trained_until_seq=self.learned_seq)
        sha = read_manifest(manifest_path)["sha256"]  # the payload's
        if self.log is not None:
            self.log.register_model(
                pointer.version,
                self.policy.name,
                self.policy.params,
                path=str(manifest_path),
                sha256=sha,
                n_updates=self.policy.n_updates,
                trained_until_seq=self.learned_seq,
            )
        self.version = pointer.version
        self._prune(keep_names={manifest_path.name})
        return Published(pointer.version, manifest_path, sha, self.learned_seq, n_rows)

    def _prune(self, keep_names: set[str]) -> None:
        """Delete all but the newest ``keep`` snapshots (a worker may still be loading one
        of the last few, and they are what a worker falls back to when the pointer is unusable)."""
        manifests = sorted(
            (p for p in self.directory.glob("*.json") if p.name != POINTER), key=lambda p: p.stat().st_mtime_ns
        )
        for old in manifests[: max(0, len(manifests) - self.keep)]:
            if old.name in keep_names:
                continue
            for path in (old, old.with_suffix(".npz"), old.with_suffix(".vw")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def run(self, *, interval_s: float = 5.0, steps: int | None = None, stop=None, echo=None) -> int:
        """Step every ``interval_s`` seconds until ``stop()`` is true or ``steps`` steps ran;
        returns the number of snapshots published."""
        published = 0
        done = 0
        while (steps is None or done < steps) and not (stop is not None and stop()):
            t0 = time.monotonic()
            out = self.step()
            done += 1
            if out is not None:
                published += 1
                if echo:
                    echo(
                        f"published {out.version}: {out.n_rows} slot rows, decisions up to seq {out.trained_until_seq}"
                    )
            if steps is None or done < steps:
                time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
        return published


class DatasetLearner(Learner):
    """A :class:`Learner` of the compacted dataset at ``root`` (``banditrec compact``: the
    closed decisions of every log shard) instead of a log.

    Every decision there is closed, so each step learns the partitions past ``learned_seq``
    (the dataset's ``seq``, which grows with every compaction run), at most ``partitions`` of
    them, in seq order, leaving out the analysis holdout as :class:`Learner` does. With a Dask
    ``client`` the partitions are read and decoded as tasks on its workers; the policy updates
    in this process, as it must for policies whose update depends on order. Snapshots are
    published as by :class:`Learner` (a dataset has no model registry: nothing is registered).
    """

    def __init__(
        self, root, policy: Policy, item_features: np.ndarray, directory, *, client=None, partitions: int = 8, **kw
    ):
        super().__init__(None, policy, item_features, directory, **kw)
        self.root = Path(root)
        self.client = client
        if partitions < 1:
            raise ValidationError(f"partitions must be >= 1, got {partitions}", "partitions")
        self.partitions = int(partitions)

    def _closed(self) -> tuple[LoggedDecisions, int] | None:
        from .evaluation.tasks import run_tasks
        from .store.partitioned import open_dataset

        todo = sorted(
            (p for p in open_dataset(self.root).partitions if p.max_seq > self.learned_seq), key=lambda p: p.min_seq
        )
        if not todo:
            return None
        todo = todo[: self.partitions]
        shared = {"after": self.learned_seq, "kind": self.kind, "default_reward": self.default_reward}
        parts = run_tasks(_read_new, todo, client=self.client, shared=shared, desc="reading")
        # a run numbers its decisions in time order, so its day parts hold consecutive seq ranges
        logged = LoggedDecisions.concat([p for p in parts if p.n_decisions] or parts)
        return logged, max(p.max_seq for p in todo)


def _read_new(part, shared: dict) -> LoggedDecisions:
    """A partition's decisions past ``shared["after"]`` (a task: runs on a Dask worker)."""
    from .store.partitioned import partition_decisions, read_partition

    table = read_partition(part)
    seq = np.unique(table.column("seq").to_numpy())
    return partition_decisions(
        table,
        kind=shared["kind"],
        default_reward=shared["default_reward"],
        first_decision=int(np.searchsorted(seq, shared["after"], side="right")),
        training=True,  # the analysis holdout is never learned from
    )
