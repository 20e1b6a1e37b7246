"""The store: the only package that owns SQLite.

- `database`: connections (WAL, busy timeout, one per operation) and schema migrations;
- `schema`: the migrations themselves, so old data directories are upgraded, never broken;
- `catalog`: `Store`, with images, model versions and users;
- `feedback`: `FeedbackLog` (`Store.feedback`), queries, impressions and interactions.
"""

from core.choices import EXPORT_FORMATS, INTERACTION_TYPES, QUERY_SOURCES, SPLITS
from core.store.catalog import (
    BASE_VERSION,
    FORGETTING_TOLERANCE,
    ImageRecord,
    ModelVersion,
    Store,
    User,
    split_for,
)
from core.store.database import BUSY_TIMEOUT_MS, StoreError, utc_now
from core.store.feedback import (
    ACTION_TYPES,
    LOG_COLUMNS,
    FeedbackLog,
    LoggedQuery,
    ResultLabel,
)
from core.store.runs import EvaluationRun, RunLog, TrainingLog, TrainingRun
from core.store.schema import MIGRATIONS

__all__ = [
    "ACTION_TYPES",
    "BASE_VERSION",
    "BUSY_TIMEOUT_MS",
    "EXPORT_FORMATS",
    "FORGETTING_TOLERANCE",
    "INTERACTION_TYPES",
    "LOG_COLUMNS",
    "MIGRATIONS",
    "QUERY_SOURCES",
    "SPLITS",
    "EvaluationRun",
    "FeedbackLog",
    "ImageRecord",
    "LoggedQuery",
    "ModelVersion",
    "ResultLabel",
    "RunLog",
    "Store",
    "StoreError",
    "TrainingLog",
    "TrainingRun",
    "User",
    "split_for",
    "utc_now",
]
