"""The vector index: one Chroma collection per model version, typed hits out.

This is the only module that imports chromadb. It owns
- the embedding contract, asserted on everything that goes in: `(n, d)` float32, finite,
  unit L2 norm (within `NORM_TOLERANCE`), and `d` equal to what the version already holds;
- the mapping from model versions ("base", "ft-0001") to collections ("lookalike-base");
- approximate search (Chroma's HNSW) and the exact numpy search that audits it.

What callers must know about Chroma (measured on chromadb 1.5.9):
- In one process, indexes on the same directory share one Chroma system: each sees the
  others' writes at once, and it lives until the last of them is closed.
- Another *process*'s writes to the directory reach counts and `get_embeddings` but not HNSW
  queries until every index here on that path is closed and reopened; if both processes
  write, the graph keeps one process's additions. One writer process per directory, or a
  Chroma server (`IndexSettings.host`) to share an index.
- HNSW build settings are fixed when a collection is created (later changes apply to new
  collections); nothing is printed on stdout, so `--json` output stays clean.
- `ef_search` can change afterwards (`set_ef_search`), but a client that has loaded the
  collection's graph keeps searching with the old value until it is closed and reopened.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.collection_configuration import CreateHNSWConfiguration
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Space
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError, NotFoundError

from core.config import ConfigError, IndexSettings, Settings
from core.errors import LookalikeError

COLLECTION_PREFIX = "lookalike-"
NORM_TOLERANCE = 1e-3  # float32 encoders land within ~1e-6 of 1; 1e-3 only catches real mistakes
SPACES = ("cosine", "ip")  # both give distance = 1 - cosine on unit vectors
_DIM_KEY = "dim"  # collection metadata: the embedding width the collection was created for
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]*[A-Za-z0-9]")  # the prefix supplies a valid start
Exclusions = Sequence[set[str]] | None  # per query row: ids to leave out of its results
_ID_PAGES = 20  # an id-only read pages this many index batches at a time
_EXACT_CHUNK = 256  # query rows per matrix product: exact search holds chunk x n scores, sorted


class VectorIndexError(LookalikeError, RuntimeError):
    """The index cannot do what was asked; the message is a sentence a user can be shown."""


class EmbeddingContractError(VectorIndexError, ValueError):
    """Embeddings (or their ids) break the contract: shape, dtype, finiteness, norm, width."""


@dataclass(frozen=True)
class Hit:
    """One search result."""

    image_id: str
    score: float  # cosine similarity (1 - Chroma's cosine distance), higher is better
    rank: int  # 1-based


def collection_name(version: str) -> str:
    """The Chroma collection holding a model version's vectors: "base" -> "lookalike-base"."""
    name = COLLECTION_PREFIX + version
    if not _VERSION_RE.fullmatch(version) or ".." in version or len(name) > 512:
        raise VectorIndexError(
            f"Model version {version!r} cannot name an index collection; use letters, digits,"
            " '.', '_' or '-', ending in a letter or digit."
        )
    return name


def check_embeddings(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Assert the embedding contract and return `x` unchanged: `(n, d)` float32, finite,
    unit L2 norm, and `d == dim` when `dim` is given. Raises `EmbeddingContractError`."""
    if not isinstance(x, np.ndarray):
        raise EmbeddingContractError(f"Embeddings must be a numpy array, not {type(x).__name__}.")
    if x.ndim != 2 or x.shape[1] == 0:
        raise EmbeddingContractError(
            f"Embeddings must be a 2-D (n, d) array with d >= 1; got shape {x.shape}."
        )
    if x.dtype != np.float32:
        raise EmbeddingContractError(f"Embeddings must be float32; got {x.dtype}.")
    if dim is not None and x.shape[1] != dim:
        raise EmbeddingContractError(
            f"Embeddings are {x.shape[1]}-d but this index version holds {dim}-d vectors;"
            " they come from a different encoder."
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise EmbeddingContractError(
            f"Embeddings contain NaN or infinite values ({int(bad.sum())} rows, first row"
            f" {int(np.argmax(bad))})."
        )
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        first = int(np.argmax(off))
        raise EmbeddingContractError(
            f"Embeddings must have unit L2 norm (within {NORM_TOLERANCE:g}); row {first} has"
            f" norm {norms[first]:.4g} ({int(off.sum())} rows off)."
        )
    return x


def recall_against_exact(approx: list[list[Hit]], exact: list[list[Hit]]) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (ids only); queries whose exact list
    is empty are skipped, and with none left there is nothing to miss (1.0)."""
    if len(approx) != len(exact):
        raise ValueError(f"Got {len(approx)} approximate and {len(exact)} exact result lists.")
    per_query = [
        len({h.image_id for h in a} & {h.image_id for h in e}) / len(e)
        for a, e in zip(approx, exact, strict=True)
        if e
    ]
    return float(np.mean(per_query)) if per_query else 1.0


class VectorIndex:
    """One Chroma client and one collection per model version; typed hits out.

    Safe to share between threads (a cached Streamlit resource): Chroma's client is, and the
    exact-search cache is guarded by a lock and a per-version write generation.
    """

    def __init__(self, settings: IndexSettings, path: Path | None = None) -> None:
        """Open the embedded index under `path`, or the server at `settings.host` if set."""
        if settings.space not in SPACES:
            raise ConfigError(f"Index space {settings.space!r} is unknown; valid: {SPACES}.")
        if settings.batch_size < 1:
            raise ConfigError("Index batch_size must be at least 1.")
        self.settings = settings
        self._client: ClientAPI | None = _open_client(settings, path)
        client_max = self._client.get_max_batch_size()  # -1 when a server does not say
        self.batch_size = min(settings.batch_size, client_max if client_max > 0 else 1 << 30)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[list[str], np.ndarray]] = {}
        self._generation: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorIndex:
        """The index the rest of the app uses: under `settings.chroma_dir`, or a server."""
        return cls(settings.index, settings.chroma_dir)

    def close(self) -> None:
        """Release the client; Chroma stops the system when no client on the path is left."""
        client, self._client = self._client, None
        # `close` lives on the concrete clients, not on the ClientAPI protocol.
        close = getattr(client, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def versions(self) -> list[str]:
        """Model versions that have a collection, sorted."""
        names = [c.name for c in self._api().list_collections()]
        return sorted(n[len(COLLECTION_PREFIX) :] for n in names if n.startswith(COLLECTION_PREFIX))

    def count(self, version: str) -> int:
        """Vectors held for `version`; 0 when it has no collection yet."""
        col = self._collection(version)
        return 0 if col is None else col.count()

    def ids(self, version: str) -> set[str]:
        """Image ids held for `version` (read without their vectors)."""
        col = self._collection(version)
        if col is None:
            return set()
        page = self.batch_size * _ID_PAGES
        with _chroma_errors(f"read the index of model version {version!r}"):
            return {
                image_id
                for start in range(0, col.count(), page)
                for image_id in col.get(limit=page, offset=start, include=[])["ids"]
            }

    def upsert(self, version: str, ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Insert or replace `embeddings` `(n, d)` under `ids` (n), creating the collection.

        Written in batches of `batch_size`; a failure part-way leaves earlier batches written.
        """
        col = self._collection(version)
        x = check_embeddings(embeddings, None if col is None else _dim(col))
        id_list = _check_ids(ids, x.shape[0])
        if not id_list:
            return
        if col is None:
            col = self._create(version, x.shape[1])
        try:
            with _chroma_errors(f"write to the index of model version {version!r}"):
                for s in range(0, len(id_list), self.batch_size):
                    e = s + self.batch_size
                    col.upsert(ids=id_list[s:e], embeddings=x[s:e])
        finally:
            self._invalidate(version)

    def delete(self, version: str, ids: Sequence[str]) -> None:
        """Remove `ids` from `version`; ids it does not hold are ignored."""
        col = self._collection(version)
        id_list = list(dict.fromkeys(_as_id_list(ids)))
        if col is None or not id_list:
            return
        try:
            with _chroma_errors(f"delete from the index of model version {version!r}"):
                for s in range(0, len(id_list), self.batch_size):
                    col.delete(ids=id_list[s : s + self.batch_size])
        finally:
            self._invalidate(version)

    def drop(self, version: str) -> None:
        """Delete `version`'s whole collection; dropping a missing version does nothing."""
        try:
            # suppress sits inside: a missing collection is already what was asked for
            doing = f"drop the index of model version {version!r}"
            with _chroma_errors(doing), suppress(NotFoundError):
                self._api().delete_collection(collection_name(version))
        finally:
            self._invalidate(version)

    def set_ef_search(self, version: str, ef: int) -> None:
        """Record `ef` (candidates explored per query) on `version`'s collection. It takes
        effect in clients that open the collection afterwards, not in this one (measured):
        close this index and open a new one to search with it."""
        if ef < 1:
            raise ConfigError(f"ef_search must be at least 1; got {ef}.")
        col = self._collection(version)
        if col is None:
            raise VectorIndexError(f"Model version {version!r} has no index to tune.")
        with _chroma_errors(f"change ef_search of model version {version!r}"):
            col.modify(configuration={"hnsw": {"ef_search": ef}})

    def get_embeddings(
        self, version: str, ids: Sequence[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """`(ids, matrix)` with `matrix` `(n, d)` float32, row i belonging to `ids[i]`.

        With `ids=None`: every vector of the version, sorted by id. Otherwise the requested
        ids that are held, in the requested order (missing ones are left out).
        """
        col = self._collection(version)
        if col is None:
            return [], np.zeros((0, 0), np.float32)
        wanted = None if ids is None else list(dict.fromkeys(_as_id_list(ids)))
        with _chroma_errors(f"read the index of model version {version!r}"):
            found, matrix = _read_vectors(col, wanted, self.batch_size)
        row = {image_id: n for n, image_id in enumerate(found)}  # a repeated id: the last read
        order = sorted(row) if wanted is None else [i for i in wanted if i in row]
        if not order:
            return [], np.zeros((0, _dim(col) or 0), np.float32)
        return order, matrix[np.fromiter((row[i] for i in order), np.intp, len(order))]

    def query(
        self, version: str, embeddings: np.ndarray, k: int, *, exclude: Exclusions = None
    ) -> list[list[Hit]]:
        """Approximate (HNSW) top-`k` for each row of `embeddings` `(m, d)`: m lists of hits.

        `k` beyond the collection returns all it holds; `exclude[i]` are ids left out of row
        i's list (e.g. the query image itself) while still returning up to `k` hits.
        """
        _check_k(k)
        col = self._collection(version)
        x = check_embeddings(embeddings, None if col is None else _dim(col))
        skip = _check_exclude(exclude, x.shape[0])
        if col is None:
            return [[] for _ in range(x.shape[0])]
        # Fetching k + |exclude| guarantees k survivors. Chroma (1.x) returns what it holds
        # when asked for more, so no `count()` first: that cost 12 ms at 70,000 vectors.
        fetch = k + max((len(s) for s in skip), default=0)
        hits: list[list[Hit]] = []
        with _chroma_errors(f"search the index of model version {version!r}"):
            for s in range(0, x.shape[0], self.batch_size):
                res = col.query(
                    query_embeddings=x[s : s + self.batch_size],
                    n_results=fetch,
                    include=["distances"],
                )
                distances = res["distances"] or []
                for row, (got, dist) in enumerate(zip(res["ids"], distances, strict=True)):
                    scores = 1.0 - np.asarray(dist, np.float64)  # distance -> similarity
                    hits.append(_rank(got, scores, k, skip[s + row]))
        return hits

    def exact_query(
        self, version: str, embeddings: np.ndarray, k: int, *, exclude: Exclusions = None
    ) -> list[list[Hit]]:
        """Brute-force top-`k` by dot product over every vector of the version: the audit
        path for `query`. Same arguments and result shape; ties are broken by id."""
        _check_k(k)
        ids, matrix = self._matrix(version)
        x = check_embeddings(embeddings, matrix.shape[1] or None)
        skip = _check_exclude(exclude, x.shape[0])
        if not ids:
            return [[] for _ in range(x.shape[0])]
        hits: list[list[Hit]] = []
        for s in range(0, x.shape[0], _EXACT_CHUNK):
            scores = x[s : s + _EXACT_CHUNK] @ matrix.T  # (chunk, n)
            # ids are sorted, so a stable sort on -score already breaks ties by id
            order = np.argsort(-scores, axis=1, kind="stable")
            for row in range(scores.shape[0]):
                top = order[row, : k + len(skip[s + row])]
                hits.append(_rank([ids[j] for j in top], scores[row, top], k, skip[s + row]))
        return hits

    def _api(self) -> ClientAPI:
        if self._client is None:
            raise VectorIndexError("The vector index has been closed; open a new one.")
        return self._client

    def _collection(self, version: str) -> Collection | None:
        # Looked up on every call (~0.5 ms) rather than cached, so a drop and re-create by
        # another object on the same path never leaves this one holding a dead handle.
        try:
            return self._api().get_collection(collection_name(version), embedding_function=None)
        except NotFoundError:
            return None

    def _create(self, version: str, dim: int) -> Collection:
        s = self.settings
        hnsw: CreateHNSWConfiguration = {
            "space": cast(Space, s.space),  # checked against SPACES in __init__
            "max_neighbors": s.max_neighbors,
            "ef_construction": s.ef_construction,
            "ef_search": s.ef_search,
        }
        with _chroma_errors(f"create the index of model version {version!r}"):
            return self._api().get_or_create_collection(
                collection_name(version),
                configuration={"hnsw": hnsw},
                metadata={_DIM_KEY: dim},
                embedding_function=None,
            )

    def _matrix(self, version: str) -> tuple[list[str], np.ndarray]:
        """The version's `(ids, (n, d) matrix)`, cached until this object writes to it."""
        with self._lock:
            cached = self._cache.get(version)
            generation = self._generation.get(version, 0)
        # The count guard also catches rows added or removed by other objects on this path.
        if cached is not None and len(cached[0]) == self.count(version):
            return cached
        fresh = self.get_embeddings(version)
        with self._lock:
            if self._generation.get(version, 0) == generation:  # no write raced the read
                self._cache[version] = fresh
        return fresh

    def _invalidate(self, version: str) -> None:
        with self._lock:
            self._cache.pop(version, None)
            self._generation[version] = self._generation.get(version, 0) + 1


def _open_client(settings: IndexSettings, path: Path | None) -> ClientAPI:
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if not settings.host and path is None:
        raise VectorIndexError("An embedded index needs a directory; pass `path`.")
    try:
        if settings.host:
            return chromadb.HttpClient(settings.host, settings.port, settings=chroma_settings)
        assert path is not None
        path.mkdir(parents=True, exist_ok=True)
        # Chroma shares one system per path *string*: resolve so that "data/chroma" and
        # "./data/chroma/" are one index, not two that cannot see each other's writes.
        return chromadb.PersistentClient(path=str(path.resolve()), settings=chroma_settings)
    except (ChromaError, ValueError, OSError) as exc:
        where = f"{settings.host}:{settings.port}" if settings.host else path
        raise VectorIndexError(f"Cannot open the vector index at {where}: {exc}") from exc


@contextmanager
def _chroma_errors(doing: str) -> Iterator[None]:
    """Turn Chroma's exceptions into a `VectorIndexError` saying what we were doing."""
    try:
        yield
    except ChromaError as exc:
        raise VectorIndexError(f"Chroma could not {doing}: {exc}") from exc


def _read_vectors(
    col: Collection, ids: list[str] | None, batch: int
) -> tuple[list[str], np.ndarray]:
    """The ids read and their `(n, d)` float32 rows, for `ids` held by `col` (all of its rows
    when None), paged; each page is made float32 as it arrives (Chroma hands back float64), so
    reading 70,000 vectors holds them once, not a float64 copy of every page beside them."""
    if ids is None:
        pages: Iterator[Any] = (
            col.get(limit=batch, offset=s, include=["embeddings"])
            for s in range(0, col.count(), batch)
        )
    else:
        pages = (
            col.get(ids=ids[s : s + batch], include=["embeddings"])
            for s in range(0, len(ids), batch)
        )
    found: list[str] = []
    rows: list[np.ndarray] = []
    for page in pages:
        vectors = page["embeddings"]
        if vectors is not None and len(page["ids"]):
            block = np.asarray(vectors, np.float32)
            if len(block) != len(page["ids"]):
                raise VectorIndexError(
                    f"Chroma returned {len(block)} vectors for {len(page['ids'])} ids."
                )
            found.extend(page["ids"])
            rows.append(block)
    return found, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def _dim(col: Collection) -> int | None:
    """The width `col` holds: from our metadata, else from a stored row, else unknown."""
    recorded = (col.metadata or {}).get(_DIM_KEY)
    if isinstance(recorded, int):
        return recorded
    got = col.get(limit=1, include=["embeddings"])
    vectors = got["embeddings"]
    return len(vectors[0]) if vectors is not None and len(vectors) else None


def _rank(ids: Sequence[str], scores: np.ndarray, k: int, skip: set[str]) -> list[Hit]:
    """Best-first hits: drop `skip`, order by score then id, keep `k`, number from 1."""
    scores = np.clip(scores, -1.0, 1.0)  # float rounding lands a hair outside [-1, 1]
    kept = sorted(
        ((float(sc), i) for i, sc in zip(ids, scores, strict=True) if i not in skip),
        key=lambda pair: (-pair[0], pair[1]),
    )
    return [Hit(image_id=i, score=sc, rank=r) for r, (sc, i) in enumerate(kept[:k], start=1)]


def _as_id_list(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not a single string.")
    return list(ids)


def _check_ids(ids: Sequence[str], n: int) -> list[str]:
    id_list = _as_id_list(ids)
    if len(id_list) != n:
        raise EmbeddingContractError(f"Got {len(id_list)} ids for {n} embedding rows.")
    if not all(isinstance(i, str) and i for i in id_list):
        raise EmbeddingContractError("Image ids must be non-empty strings.")
    if len(set(id_list)) != n:
        dup = next(i for i, c in Counter(id_list).items() if c > 1)
        raise EmbeddingContractError(f"Image id {dup!r} appears more than once in one upsert.")
    return id_list


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")


def _check_exclude(exclude: Exclusions, m: int) -> list[set[str]]:
    if exclude is None:
        return [set() for _ in range(m)]
    if len(exclude) != m:
        raise ValueError(f"exclude needs one set per query row: got {len(exclude)} for {m} rows.")
    return [set(s) for s in exclude]
