"""Nearest-neighbour methods side by side: the seed's serving chapter as code.

Exact search (hand-written and faiss's), a K-D tree on PCA-reduced vectors, random-hyperplane
LSH (hand-written and faiss's), IVF (hand-written k-means and faiss's) and HNSW (Chroma's, as
search uses it, and faiss's), all behind `NNIndex` (`base.py`); and the R-tree over a map's 2-D
coordinates (`spatial.py`). This package is the only importer of faiss and rtree.

The registry is a private dict behind `list_methods` / `get_method` / `make`, as open_clip's;
a method's module is imported when it is first asked for, so a page that needs the R-tree does
not load faiss and scikit-learn.
"""

from __future__ import annotations

import importlib

from core.search.nn.base import MISSING_ROW, NNError, NNIndex, check_vectors, unit_rows

# method -> (module, class); the order is the lab's (each hand-written method beside its reference)
_METHODS: dict[str, tuple[str, str]] = {
    "exact": ("core.search.nn.exact", "ExactIndex"),
    "exact-faiss": ("core.search.nn.exact", "FaissFlatIndex"),
    "kd-tree": ("core.search.nn.kdtree", "KDTreeIndex"),
    "lsh": ("core.search.nn.lsh", "LSHIndex"),
    "lsh-faiss": ("core.search.nn.lsh", "FaissLSHIndex"),
    "ivf": ("core.search.nn.ivf", "IVFIndex"),
    "ivf-faiss": ("core.search.nn.ivf", "FaissIVFIndex"),
    "hnsw-chroma": ("core.search.nn.chroma", "ChromaHNSWIndex"),
    "hnsw-faiss": ("core.search.nn.hnsw", "FaissHNSWIndex"),
}


def list_methods() -> list[str]:
    """Every method's name, in the lab's order."""
    return list(_METHODS)


def get_method(name: str) -> type[NNIndex]:
    """The class of method `name`; an unknown name raises NNError naming the valid ones."""
    if name not in _METHODS:
        raise NNError(f"Unknown nearest-neighbour method {name!r}; valid: {', '.join(_METHODS)}.")
    module, cls = _METHODS[name]
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, NNIndex)) or found.method != name:
        raise TypeError(f"{module}.{cls} is not the NNIndex of {name!r}.")
    return found


def make(name: str, **params: int) -> NNIndex:
    """An unbuilt index of method `name` with `params` (the rest default)."""
    return get_method(name)(**params)


__all__ = [
    "MISSING_ROW",
    "NNError",
    "NNIndex",
    "check_vectors",
    "get_method",
    "list_methods",
    "make",
    "unit_rows",
]
