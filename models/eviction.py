"""Which tokens the sink cache evicts when it must make room.

:class:`~models.sinkcache.SinkCache` by default evicts the oldest tokens after
the sinks (StreamingLLM). An :class:`EvictionPolicy` replaces that choice:
the cache asks it for the cache positions to drop, removes them (any set of
positions, not only a contiguous run), shifts the later tokens down so
positions stay contiguous, and tells the policy what happened, so a policy
that keeps per-token state (attention scores, pins) stays in step with the
cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

#: The eviction choices a user can pick. ``sinks`` (the default) is
#: StreamingLLM; the others are experimental (:mod:`models.h2o`).
EvictionMode = Literal["sinks", "h2o", "sinks+h2o"]

EVICTION_MODES: tuple[EvictionMode, ...] = ("sinks", "h2o", "sinks+h2o")


class EvictionPolicy(Protocol):
    """Choose the tokens to evict, and follow the cache's edits.

    Positions are cache positions (``0 .. n_cached - 1``); the cache keeps
    them contiguous, so the token at position ``p`` is the ``p``-th cached
    token.
    """

    def choose(self, n_cached: int, n_protected: int, k: int) -> Sequence[int]:
        """Return ``k`` distinct positions to evict, ascending.

        Args:
            n_cached: Tokens in the cache now.
            n_protected: Leading positions that must not be chosen (the sinks).
            k: How many to evict; ``1 <= k <= n_cached - n_protected``.

        Raises:
            GenerationError: The policy lost track of the cache.
        """
        ...

    def evicted(self, positions: Sequence[int]) -> None:
        """The cache removed ``positions`` (ascending) and closed the gaps."""
        ...

    def truncated(self, n_cached: int) -> None:
        """The cache dropped every position from ``n_cached`` on (0: cleared)."""
        ...
