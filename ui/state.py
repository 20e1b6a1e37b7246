"""Session-state keys and helpers: work a rerun must not repeat."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import streamlit as st

T = TypeVar("T")

_MEMO_KEY = "memo"  # {key: value} of this session's computed results
_MEMO_SIZE = 32  # the last results are kept; older ones are recomputed if asked again


def remember(key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()` once per key and session: Streamlit reruns the script on every click."""
    memo: dict[Hashable, object] = st.session_state.setdefault(_MEMO_KEY, {})
    if key not in memo:
        if len(memo) >= _MEMO_SIZE:
            memo.pop(next(iter(memo)))
        memo[key] = compute()
    return memo[key]  # type: ignore[return-value]
