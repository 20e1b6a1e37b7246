"""Settings: frozen dataclasses with defaults, and one loader (flags > environment > file).

Nothing here is global: callers build a `Settings` with `load_settings()` and pass it (or the
part they need) down explicitly.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.choices import PRECISIONS
from core.errors import LookalikeError

DATA_ENV = "LOOKALIKE_DATA"
CONFIG_ENV = "LOOKALIKE_CONFIG"
DEFAULT_DATA_DIR = Path("data")


class ConfigError(LookalikeError, ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be before it is refused."""

    max_bytes: int = 50 * 1024 * 1024  # files larger than this are refused before decoding
    max_pixels: int = 64_000_000  # width * height cap against decompression bombs
    thumb_size: int = 256  # longest side of the thumbnails the UI shows


@dataclass(frozen=True)
class IndexSettings:
    """Vector index (Chroma) settings.

    HNSW numbers were chosen by measuring recall@10 against exact search on the demo gallery
    (`python -m core bench`); Chroma's defaults (M=16, ef=100) fall short of 0.99 there.
    """

    host: str | None = None  # a Chroma server's host; None = embedded client under data_dir
    port: int = 8000  # the Chroma server's port, used only with `host`
    space: str = "cosine"  # distance; embeddings are unit-norm so cosine == 1 - dot
    max_neighbors: int = 32  # HNSW M: links per node
    ef_construction: int = 200  # candidates explored while building the graph
    ef_search: int = 200  # candidates explored per query
    batch_size: int = 256  # vectors per upsert call


@dataclass(frozen=True)
class Settings:
    """Everything a command, a page or a test needs to know about where and how to run."""

    data_dir: Path = DEFAULT_DATA_DIR  # catalog, images, thumbnails, index and models live here
    encoder: str = (
        "efficientnet-lite0"  # the base encoder, a name from core.encoder.model.list_encoders()
    )
    batch_size: int = 32  # images per encoder forward pass
    precision: str = "auto"  # a new base version's tower arithmetic (core.encoder.precision)
    ingest_workers: int = 2  # threads that read, decode, hash and resize while the tower runs
    images: ImageLimits = field(default_factory=ImageLimits)
    index: IndexSettings = field(default_factory=IndexSettings)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.db"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def thumbs_dir(self) -> Path:
        return self.data_dir / "thumbs"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def queries_dir(self) -> Path:
        """Uploaded query images: kept (content-addressed) for the log, not in the gallery."""
        return self.data_dir / "queries"

    @property
    def projections_dir(self) -> Path:
        """Cached 2-D maps of the embedding space, per version and gallery state."""
        return self.data_dir / "projections"

    @property
    def jobs_dir(self) -> Path:
        """Background measuring jobs (maps, evaluations): one status file and log per kind."""
        return self.data_dir / "jobs"

    @property
    def numba_cache_dir(self) -> Path:
        """numba's compiled UMAP functions, kept on disk for the next map process."""
        return self.data_dir / "numba"

    @property
    def rankings_dir(self) -> Path:
        """Cached rankings behind the Metrics page's curves and worst queries."""
        return self.data_dir / "rankings"

    @property
    def lab_dir(self) -> Path:
        """The index lab's stored results, one file per model version."""
        return self.data_dir / "lab"

    @property
    def demo_dir(self) -> Path:
        """Where the demo gallery's Debian package is downloaded and unpacked."""
        return self.data_dir / "demo"


def _from_mapping(cls: type[Any], values: dict[str, Any]) -> Any:
    """Build a (nested) settings dataclass from a plain mapping, refusing unknown keys."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid: {', '.join(sorted(known))}."
        )
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        if isinstance(default, ImageLimits | IndexSettings):
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a table of settings, not {value!r}.")
            kwargs[name] = _from_mapping(type(default), value)
            continue
        # A file's wrong type would otherwise surface later as a TypeError far from its cause.
        expected = str if default is None or isinstance(default, Path) else type(default)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"Setting {name} must be a {expected.__name__}, not {value!r}.")
        kwargs[name] = Path(value) if isinstance(default, Path) else value
    return cls(**kwargs)


def load_settings(
    data_dir: str | Path | None = None,
    *,
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings: explicit arguments win over the environment, which wins over a file.

    - file: TOML at `config_file` or `$LOOKALIKE_CONFIG` (top-level keys as in `Settings`,
      `[images]` and `[index]` tables);
    - environment: `LOOKALIKE_DATA` (data directory), `LOOKALIKE_ENCODER`,
      `LOOKALIKE_PRECISION` (auto | fp32 | bf16, for versions created from now on),
      `LOOKALIKE_CHROMA_HOST` / `LOOKALIKE_CHROMA_PORT` (use a Chroma server);
    - arguments: `data_dir` and any top-level `Settings` field as a keyword.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(CONFIG_ENV)
    if path:
        try:
            settings = _from_mapping(Settings, tomllib.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read the configuration file {path}: {exc}.") from exc

    if env.get(DATA_ENV):
        settings = replace(settings, data_dir=Path(env[DATA_ENV]))
    if env.get("LOOKALIKE_ENCODER"):
        settings = replace(settings, encoder=env["LOOKALIKE_ENCODER"])
    if env.get("LOOKALIKE_PRECISION"):
        settings = replace(settings, precision=env["LOOKALIKE_PRECISION"])
    if env.get("LOOKALIKE_CHROMA_HOST"):
        host = env["LOOKALIKE_CHROMA_HOST"]
        settings = replace(settings, index=replace(settings.index, host=host))
    if env.get("LOOKALIKE_CHROMA_PORT"):  # on its own too: it must beat a file's port
        try:
            port = int(env["LOOKALIKE_CHROMA_PORT"])
        except ValueError as exc:
            raise ConfigError("LOOKALIKE_CHROMA_PORT must be a whole number.") from exc
        if not 0 < port < 65536:
            raise ConfigError("LOOKALIKE_CHROMA_PORT must be between 1 and 65535.")
        settings = replace(settings, index=replace(settings.index, port=port))

    if data_dir is not None:
        settings = replace(settings, data_dir=Path(data_dir))
    if overrides:
        settings = replace(settings, **overrides)
    if settings.batch_size < 1:
        raise ConfigError("batch_size must be at least 1.")
    if settings.ingest_workers < 1:
        raise ConfigError("ingest_workers must be at least 1.")
    if settings.precision not in ("auto", *PRECISIONS):
        raise ConfigError(
            f"precision must be auto or one of {', '.join(PRECISIONS)}, not {settings.precision!r}."
        )
    return settings
