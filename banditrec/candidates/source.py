"""The candidate-source protocol: what :class:`banditrec.engine.Engine` asks for a request's
candidates when the request brings none.

A source is anything with :meth:`CandidateSource.candidates_for_session`; the engine calls
nothing else. :class:`~banditrec.candidates.ItemItemCF` (item-to-item CF on the history and
the session's items as seeds) and :class:`~banditrec.candidates.CandidateGenerator` (the shop's
full candidate model) implement it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class SessionItems(Protocol):
    """What a source may read of the user's session (:class:`banditrec.engine.Session`):
    catalog indices of the items carted, bought and viewed within the session window, newest
    first, and the seeds of item-to-item CF (each session item repeated by its kind's weight)."""

    cart: np.ndarray
    purchased: np.ndarray
    viewed: np.ndarray

    def seeds(self) -> np.ndarray: ...


@runtime_checkable
class CandidateSource(Protocol):
    """A source of candidates for one request."""

    def candidates_for_session(
        self, history: np.ndarray, session: SessionItems, N: int, exclude=None, segment: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``N`` candidates for a user.

        Parameters
        ----------
        history : (h,) int
            Catalog indices of the user's known purchases (empty for an unknown user).
        session : SessionItems
            The user's recent interactions.
        N : int
            How many candidates to return (fewer when the source has no more).
        exclude : (e,) int, optional
            Catalog indices never to return.
        segment : int, optional
            The user's segment index; ``None`` when unknown (or when the deployment has no
            segments). A source without segments accepts and ignores it.

        Returns
        -------
        ids : (n,) int
            Catalog indices, best first.
        scores : (n,) float
        source : (n,) object
            Each candidate's source name (logged with the slot, e.g. ``"cf"``, ``"popular"``).
        """
        ...
