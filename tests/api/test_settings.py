"""Settings come from SLOTBANDIT_* variables, typed by each field's default, and are validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.learner import LearnerSettings
from api.settings import ClientKeys, ServiceSettings, SettingsError


def test_service_settings_parse_each_type() -> None:
    s = ServiceSettings.from_env({
        "SLOTBANDIT_DATABASE_URL": "postgresql+psycopg://db/x",
        "SLOTBANDIT_GEO_HEADERS": "CF-IPCountry, ,X-Country",
        "SLOTBANDIT_CORS_ORIGINS": "https://a.example,https://B.example",
        "SLOTBANDIT_DEMO": "yes",
        "SLOTBANDIT_EMBEDDED_LEARNER": "0",
        "SLOTBANDIT_MAX_CANDIDATES": "20",
        "SLOTBANDIT_RELOAD_INTERVAL_S": "2",
        "SLOTBANDIT_MODEL_POLL_INTERVAL_S": "0.5",
    }, max_id_length=100)
    assert s.database_url == "postgresql+psycopg://db/x" and not s.is_sqlite
    assert s.geo_headers == ("cf-ipcountry", "x-country")  # header names lower-cased, blanks dropped
    assert s.cors_origins == ("https://a.example", "https://B.example")  # origins kept as written
    assert s.demo is True and s.embedded_learner is False
    assert s.max_candidates == 20 and s.reload_interval_s == 2.0 and s.max_id_length == 100
    assert s.model_poll_interval_s == 0.5


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"SLOTBANDIT_MAX_CANDIDATES": "0"}, SettingsError),
        ({"SLOTBANDIT_RELOAD_INTERVAL_S": "0.001"}, SettingsError),
        ({"SLOTBANDIT_MODEL_POLL_INTERVAL_S": "0"}, SettingsError),
        ({"SLOTBANDIT_SWITCH_INTERVAL_MS": "500"}, SettingsError),
        ({"SLOTBANDIT_MAX_CANDIDATES": "many"}, ValueError),
    ],
)
def test_bad_service_settings_are_refused(env: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        ServiceSettings.from_env(env)


def test_learner_settings_use_their_own_prefix() -> None:
    s = LearnerSettings.from_env({"SLOTBANDIT_LEARNER_BATCH_SIZE": "7", "SLOTBANDIT_BATCH_SIZE": "9",
                                  "SLOTBANDIT_LEARNER_LEASE_TTL_S": "5"})
    assert s.batch_size == 7 and s.lease_ttl_s == 5.0
    with pytest.raises(ValueError):
        LearnerSettings.from_env({"SLOTBANDIT_LEARNER_LEASE_TTL_S": "0.1"})


def test_sqlite_durability_and_the_metrics_folder_are_settings() -> None:
    s = ServiceSettings.from_env({"SLOTBANDIT_SQLITE_SYNCHRONOUS": "full", "PROMETHEUS_MULTIPROC_DIR": "/tmp/m"})
    assert s.sqlite_synchronous == "FULL" and s.metrics_dir == "/tmp/m"
    assert ServiceSettings.from_env({}).sqlite_synchronous == "NORMAL" and ServiceSettings.from_env({}).metrics_dir is None
    with pytest.raises(SettingsError, match="sqlite_synchronous"):
        ServiceSettings.from_env({"SLOTBANDIT_SQLITE_SYNCHRONOUS": "OFF"})
    assert ClientKeys.from_env({"SLOTBANDIT_API_KEY": "k", "SLOTBANDIT_ADMIN_KEY": "a"}) == ClientKeys("k", "a")


def test_only_settings_reads_the_environment() -> None:
    """Every other module receives settings: ``os.environ`` and ``getenv`` appear in api/settings.py only."""
    root = Path(__file__).resolve().parents[2]
    readers = sorted(
        str(path.relative_to(root)) for package in ("api", "bandits", "analysis")
        for path in (root / package).rglob("*.py")
        if re.search(r"os\.environ|getenv|environ\.get", path.read_text(encoding="utf-8"))
    )
    assert readers == ["api/settings.py"]
