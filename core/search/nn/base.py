"""The one interface every nearest-neighbour method of the lab implements.

A method is a class with a name (`method`), integer parameters split into those that shape the
built structure (`build_keys`: changing one means building again) and those read at query time
(`query_keys`: `retune` changes them on a built index, so a sweep over `nprobe` or `ef` builds
once). Vectors are cosine-ready: `(n, d)` float32 rows of unit norm, so the inner product is the
cosine similarity every method ranks by.

    index = make("ivf", nlist=256).build(vectors)   # (n, d)
    rows, scores = index.query(queries, k=10)        # (m, k) int64 row numbers into vectors,
                                                     # (m, k) float32, best first
    index.retune(nprobe=8); index.memory_bytes; index.params
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from core.errors import LookalikeError

NORM_TOLERANCE = 1e-3  # as the vector index's contract (core.search.index)
MISSING_ROW = -1  # a row a method could not fill (fewer than k candidates found)


class NNError(LookalikeError, ValueError):
    """A nearest-neighbour method was given something it cannot use (a parameter, a shape,
    vectors that are not unit-norm, a query before build)."""


def check_vectors(x: np.ndarray, dim: int | None = None, what: str = "Vectors") -> np.ndarray:
    """`x` unchanged if it is `(n, d)` float32, finite, unit-norm (and `d == dim`)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] == 0:
        shape = getattr(x, "shape", None)
        raise NNError(f"{what} must be a 2-D (n, d) numpy array; got shape {shape}.")
    if x.dtype != np.float32:
        raise NNError(f"{what} must be float32; got {x.dtype}.")
    if dim is not None and x.shape[1] != dim:
        raise NNError(f"{what} are {x.shape[1]}-d but the index holds {dim}-d vectors.")
    if not np.isfinite(x).all():
        raise NNError(f"{what} contain NaN or infinite values.")
    norms = np.linalg.norm(x, axis=1)
    if x.shape[0] and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise NNError(f"{what} must have unit L2 norm; normalise them first (`unit_rows`).")
    return x


def unit_rows(x: np.ndarray, what: str = "Vectors") -> np.ndarray:
    """`(n, d)` rows scaled to unit L2 norm as float32 (cosine = inner product afterwards).
    A zero or non-finite row has no direction and is refused."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise NNError(f"{what} must be a 2-D (n, d) array; got shape {x.shape}.")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise NNError(
            f"{what}: {int(bad.sum())} rows are zero or not finite (first row "
            f"{int(np.argmax(bad))}); cosine similarity needs a direction."
        )
    return np.ascontiguousarray(x / norms, dtype=np.float32)


class NNIndex(ABC):
    """A nearest-neighbour index by inner product over unit vectors. Subclasses set the class
    variables and implement `_build`, `_query` and `memory_bytes`; `_retune` when they have
    query-time parameters."""

    method: ClassVar[str]  # the name the registry and the lab use ("ivf", "hnsw-faiss", …)
    reference: ClassVar[str | None] = None  # the method this one is checked against, if any
    defaults: ClassVar[Mapping[str, int]] = {}  # every parameter with its default
    build_keys: ClassVar[tuple[str, ...]] = ()  # parameters of the built structure
    note: ClassVar[str] = ""  # one or two sentences: what it trades (the lab page shows it)

    def __init__(self, **params: int) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise NNError(f"{self.method} has no parameter {unknown[0]!r}; valid: {valid}.")
        merged = {**self.defaults, **params}
        for key, value in merged.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise NNError(f"{self.method}: {key} must be a positive integer; got {value!r}.")
        self._params = {key: int(value) for key, value in merged.items()}
        self._validate()
        self.n = 0  # rows built
        self.dim = 0  # their width
        self._built = False

    @property
    def params(self) -> dict[str, int]:
        """Every parameter's current value (build and query)."""
        return dict(self._params)

    @property
    def query_keys(self) -> tuple[str, ...]:
        return tuple(key for key in self.defaults if key not in self.build_keys)

    def build(self, vectors: np.ndarray) -> NNIndex:
        """Index `(n, d)` unit-norm float32 rows (n >= 1); returns self."""
        check_vectors(vectors)
        if vectors.shape[0] == 0:
            raise NNError(f"{self.method}: there is nothing to index (0 vectors).")
        self.n, self.dim = vectors.shape
        self._build(np.ascontiguousarray(vectors))
        self._built = True
        return self

    def retune(self, **params: int) -> None:
        """Change query-time parameters of a built index (no rebuild)."""
        fixed = sorted(set(params) & set(self.build_keys))
        if fixed:
            raise NNError(f"{self.method}: {fixed[0]} is fixed at build time; build again.")
        candidate = type(self)(**{**self._params, **params})  # validates
        self._params = candidate._params
        if self._built:
            self._retune()

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best rows for each of `(m, d)` unit-norm queries: `(m, k)` int64 row numbers
        into the built vectors and `(m, k)` float32 inner products, best first. Where a method
        found fewer than k, rows are `MISSING_ROW` and scores `-inf`."""
        if not self._built:
            raise NNError(f"{self.method}: build the index before querying it.")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise NNError(f"k must be a positive integer; got {k!r}.")
        check_vectors(queries, self.dim, "Queries")
        rows, scores = self._query(np.ascontiguousarray(queries), int(k))
        return rows.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the built index holds: its structures and any vectors it reads at query time."""

    @classmethod
    def sweep(cls, n: int, dim: int) -> list[dict[str, int]]:
        """The lab's points for `n` vectors of width `dim`: parameter dicts, ordered so that
        consecutive points share build parameters where they can (one build, several
        `retune`s). Default: the defaults alone."""
        return [dict(cls.defaults)]

    def _validate(self) -> None:
        """Check parameter combinations (e.g. nprobe <= nlist); raise NNError."""
        return

    @abstractmethod
    def _build(self, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def _retune(self) -> None:
        """Apply `self.params`' query-time values to the built structure."""
        return


def pad(rows: list[np.ndarray], scores: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query candidate rows and scores (any length) -> the top k of each, best first, as
    `(m, k)` arrays padded with MISSING_ROW / -inf. Ties keep the lower row first."""
    m = len(rows)
    out_rows = np.full((m, k), MISSING_ROW, dtype=np.int64)
    out_scores = np.full((m, k), -np.inf, dtype=np.float32)
    for i, (r, s) in enumerate(zip(rows, scores, strict=True)):
        if len(r) == 0:
            continue
        order = np.lexsort((r, -s))[:k]
        out_rows[i, : len(order)] = r[order]
        out_scores[i, : len(order)] = s[order]
    return out_rows, out_scores
