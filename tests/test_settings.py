from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tickfold.errors import ConfigError
from tickfold.settings import Settings, mask_url

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-Pa55"


def test_defaults_mean_embedded_servers() -> None:
    s = Settings.load({})
    assert s.redis_url is None and s.database_url is None
    assert s.data_dir == ".tickfold"


def test_environment_then_flags_win(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[tickfold]\nbatch_size = 10\nblock_ms = 7\n")
    s = Settings.load({"TICKFOLD_BATCH_SIZE": "20"}, config_file=str(cfg), overrides={"batch_size": 30})
    assert (s.batch_size, s.block_ms) == (30, 7)
    s = Settings.load({"TICKFOLD_BATCH_SIZE": "20", "TICKFOLD_CONFIG": str(cfg)})
    assert (s.batch_size, s.block_ms) == (20, 7)


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"TICKFOLD_BATCH_SIZE": "lots"}, "TICKFOLD_BATCH_SIZE"),
        ({"TICKFOLD_BATCH_SIZE": "0"}, "TICKFOLD_BATCH_SIZE"),
        ({"TICKFOLD_REDIS_URL": "http://localhost:6379"}, "TICKFOLD_REDIS_URL"),
        ({"TICKFOLD_REDIS_URL": "redis://"}, "TICKFOLD_REDIS_URL"),
        ({"TICKFOLD_DATABASE_URL": "mysql://u@h/db"}, "TICKFOLD_DATABASE_URL"),
        ({"TICKFOLD_DATABASE_URL": "postgresql://u:pw@h:99999/db"}, "TICKFOLD_DATABASE_URL"),
        ({"TICKFOLD_LOG_LEVEL": "chatty"}, "TICKFOLD_LOG_LEVEL"),
    ],
)
def test_bad_values_name_their_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_bad_toml_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[tickfold]\nbatch_sise = 10\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        Settings.load({}, config_file=str(cfg))
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load({}, config_file=str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://app:{SECRET}@cache.example:6380/1", "rediss://app:***@cache.example:6380/1"),
        (f"postgresql://app:{SECRET}@db/tickfold?sslmode=require", "postgresql://app:***@db/tickfold?sslmode=require"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://app@db/tickfold", "postgresql://app@db/tickfold"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_password_never_printed_by_help_or_errors() -> None:
    env = {
        "TICKFOLD_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
        "TICKFOLD_DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:1:2/db",
        "PATH": "/usr/bin:/bin",
    }
    for args in (["--help"], ["candles", "--help"], ["candles", "binance", "BTCUSDT", "1m"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tickfold.cli", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert SECRET not in proc.stdout + proc.stderr
    # the last one fails on the bad database URL, naming the key and masking the password
    assert proc.returncode == 2
    assert "TICKFOLD_DATABASE_URL" in proc.stderr and "***" in proc.stderr
