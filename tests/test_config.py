"""Settings: defaults, flags > environment > TOML file, validation with readable errors.

Every test passes `environ=` (never the real os.environ) and writes its own TOML file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import ConfigError, Settings, load_settings


@pytest.fixture
def write_toml(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "lookalike.toml"
        path.write_text(text)
        return path

    return write


def test_defaults_without_file_environment_or_flags():
    settings = load_settings(environ={})

    assert settings.data_dir == Path("data")
    assert settings.encoder == "efficientnet-lite0"
    assert settings.batch_size == 32
    assert (settings.index.host, settings.index.port, settings.index.space) == (
        None,
        8000,
        "cosine",
    )
    assert settings.images.thumb_size == 256
    assert settings == Settings()


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().batch_size = 1  # type: ignore[misc]


FILE = 'data_dir = "from-file"\nencoder = "file-encoder"\nbatch_size = 4\n'
ENV = {"LOOKALIKE_DATA": "from-env", "LOOKALIKE_ENCODER": "env-encoder"}


def test_file_values_apply_when_nothing_else_is_set(write_toml):
    settings = load_settings(config_file=write_toml(FILE), environ={})

    assert (settings.data_dir, settings.encoder, settings.batch_size) == (
        Path("from-file"),
        "file-encoder",
        4,
    )


def test_environment_beats_the_file(write_toml):
    settings = load_settings(config_file=write_toml(FILE), environ=ENV)

    assert (settings.data_dir, settings.encoder) == (Path("from-env"), "env-encoder")
    assert settings.batch_size == 4  # not set in the environment: the file's value stays


def test_flags_beat_the_environment_and_the_file(write_toml):
    settings = load_settings(
        "from-flag", config_file=write_toml(FILE), environ=ENV, encoder="flag-encoder"
    )

    assert (settings.data_dir, settings.encoder, settings.batch_size) == (
        Path("from-flag"),
        "flag-encoder",
        4,
    )


def test_empty_environment_variables_count_as_unset(write_toml):
    env = {"LOOKALIKE_DATA": "", "LOOKALIKE_ENCODER": "", "LOOKALIKE_CHROMA_PORT": ""}

    settings = load_settings(config_file=write_toml(FILE), environ=env)

    assert (settings.data_dir, settings.encoder) == (Path("from-file"), "file-encoder")


def test_config_file_can_come_from_the_environment(write_toml):
    path = write_toml('encoder = "via-env-path"\n')

    assert load_settings(environ={"LOOKALIKE_CONFIG": str(path)}).encoder == "via-env-path"


def test_an_explicit_config_file_beats_lookalike_config(write_toml, tmp_path: Path):
    other = tmp_path / "other.toml"
    other.write_text('encoder = "other"\n')
    path = write_toml('encoder = "explicit"\n')

    settings = load_settings(config_file=path, environ={"LOOKALIKE_CONFIG": str(other)})

    assert settings.encoder == "explicit"


def test_images_and_index_tables_set_nested_settings_and_keep_other_defaults(write_toml):
    path = write_toml(
        "[images]\nmax_bytes = 1024\nthumb_size = 64\n\n"
        '[index]\nhost = "chroma.local"\nport = 9000\nef_search = 50\n'
    )

    settings = load_settings(config_file=path, environ={})

    assert (settings.images.max_bytes, settings.images.thumb_size) == (1024, 64)
    assert settings.images.max_pixels == 64_000_000
    assert (settings.index.host, settings.index.port, settings.index.ef_search) == (
        "chroma.local",
        9000,
        50,
    )
    assert (settings.index.max_neighbors, settings.index.batch_size) == (32, 256)
    assert settings.batch_size == 32


@pytest.mark.parametrize(
    ("text", "unknown", "valid"),
    [
        ("colour = 1\nbatchsize = 2\n", "batchsize, colour", "batch_size, data_dir, encoder"),
        ("[index]\nef = 10\n", "ef", "batch_size, ef_construction, ef_search, host"),
        ("[images]\nmax_size = 10\n", "max_size", "max_bytes, max_pixels, thumb_size"),
    ],
)
def test_unknown_keys_are_named_with_the_valid_ones(write_toml, text, unknown, valid):
    with pytest.raises(ConfigError) as excinfo:
        load_settings(config_file=write_toml(text), environ={})

    assert f"Unknown setting(s) {unknown}" in str(excinfo.value)
    assert valid in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('batch_size = "8"\n', "batch_size"),
        ("batch_size = 8.0\n", "batch_size"),
        ("data_dir = 5\n", "data_dir"),
        ("encoder = true\n", "encoder"),
        ("images = 3\n", "images"),
        ('[index]\nport = "8000"\n', "port"),
        ("[index]\nhost = 1\n", "host"),
        ("[images]\nmax_bytes = true\n", "max_bytes"),
    ],
)
def test_a_value_of_the_wrong_type_in_the_file_is_a_config_error(write_toml, text, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(config_file=write_toml(text), environ={})


def test_a_missing_config_file_is_a_config_error(tmp_path: Path):
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match="Cannot read the configuration file"):
        load_settings(config_file=missing, environ={})
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(environ={"LOOKALIKE_CONFIG": str(missing)})


def test_a_directory_as_config_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="Cannot read the configuration file"):
        load_settings(config_file=tmp_path, environ={})


@pytest.mark.parametrize("text", ["batch_size = \n", "[index\nport = 1\n", "encoder = 'a\n"])
def test_invalid_toml_is_a_config_error(write_toml, text):
    with pytest.raises(ConfigError, match="Cannot read the configuration file"):
        load_settings(config_file=write_toml(text), environ={})


def test_a_binary_config_file_is_a_config_error(tmp_path: Path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"encoder = '\xff\xfe'\n")

    with pytest.raises(ConfigError, match="Cannot read the configuration file"):
        load_settings(config_file=path, environ={})


def test_chroma_host_from_the_environment_keeps_the_default_port():
    settings = load_settings(environ={"LOOKALIKE_CHROMA_HOST": "chroma.example"})

    assert (settings.index.host, settings.index.port) == ("chroma.example", 8000)


def test_chroma_host_and_port_from_the_environment_beat_the_file(write_toml):
    path = write_toml('[index]\nhost = "file-host"\nport = 1234\n')
    env = {"LOOKALIKE_CHROMA_HOST": "env-host", "LOOKALIKE_CHROMA_PORT": "9001"}

    settings = load_settings(config_file=path, environ=env)

    assert (settings.index.host, settings.index.port) == ("env-host", 9001)


def test_chroma_port_alone_from_the_environment_beats_the_file(write_toml):
    path = write_toml('[index]\nhost = "file-host"\nport = 1234\n')

    settings = load_settings(config_file=path, environ={"LOOKALIKE_CHROMA_PORT": "9001"})

    assert (settings.index.host, settings.index.port) == ("file-host", 9001)


@pytest.mark.parametrize("port", ["abc", "80.5", "0", "-1", "65536"])
def test_a_bad_chroma_port_is_a_config_error(port: str):
    env = {"LOOKALIKE_CHROMA_HOST": "h", "LOOKALIKE_CHROMA_PORT": port}

    with pytest.raises(ConfigError, match="LOOKALIKE_CHROMA_PORT"):
        load_settings(environ=env)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_below_one_is_a_config_error_from_flags_or_file(write_toml, batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings(environ={}, batch_size=batch_size)
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings(config_file=write_toml(f"batch_size = {batch_size}\n"), environ={})


def test_batch_size_of_one_is_accepted():
    assert load_settings(environ={}, batch_size=1).batch_size == 1


def test_derived_paths_sit_under_the_data_dir(tmp_path: Path):
    data = tmp_path / "somewhere"

    settings = load_settings(data, environ={"LOOKALIKE_DATA": "ignored"})

    assert settings.data_dir == data
    assert settings.catalog_path == data / "catalog.db"
    assert settings.images_dir == data / "images"
    assert settings.thumbs_dir == data / "thumbs"
    assert settings.chroma_dir == data / "chroma"
    assert settings.models_dir == data / "models"
    assert settings.demo_dir == data / "demo"
