"""The job message contract (service/messaging.py): one Celery configuration for both sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.messaging import EMBEDDED_ALIAS, celery_config
from service.settings import Settings
from tests.support.api import REPO_ROOT, child_env


def test_config_follows_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        default_queue="cpu-jobs",
        job_soft_time_limit_s=11,
        job_time_limit_s=13,
        broker_polling_interval_s=0.05,
    )
    config = celery_config(settings)
    url = f"{EMBEDDED_ALIAS}+sqlite:///{(tmp_path / 'broker.db').resolve()}"
    assert config["broker_url"] == url  # kombu's sqla transport, polled at our interval
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["task_acks_late"] is True and config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (11, 13)
    assert config["task_default_queue"] == "cpu-jobs"
    assert config["broker_transport_options"]["polling_interval"] == 0.05  # type: ignore[index]
    redis = celery_config(Settings(broker_url="redis://127.0.0.1:6379/3", job_time_limit_s=7200))
    assert redis["broker_url"] == "redis://127.0.0.1:6379/3"
    assert redis["broker_transport_options"]["visibility_timeout"] > 7200  # type: ignore[index]
    # A set timeout reaches senders and workers alike, with a restore scan frequent enough.
    short = celery_config(
        Settings(broker_url="redis://127.0.0.1:6379/3", broker_visibility_timeout_s=4)
    )
    options = short["broker_transport_options"]
    assert options["visibility_timeout"] == 4  # type: ignore[index]
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 4  # type: ignore[index]


def test_importing_the_app_has_no_side_effects(tmp_path: Path) -> None:
    # Importing must not build a Celery app, read settings into the process cache, or touch
    # kombu's global transport table; create_app(settings) uses exactly the settings it gets.
    code = (
        "from kombu.transport import TRANSPORT_ALIASES\n"
        "from celery import _state\n"
        "import service.api.app as app_module\n"
        "from service.settings import Settings, get_settings\n"
        f"assert {EMBEDDED_ALIAS!r} not in TRANSPORT_ALIASES\n"
        "assert get_settings.cache_info().currsize == 0\n"
        "assert not list(_state._get_active_apps())\n"
        "import sys\n"
        f"app = app_module.create_app(Settings(data_dir=sys.argv[1], default_queue='mine'))\n"
        "assert app.state.settings.default_queue == 'mine'\n"
        "assert get_settings.cache_info().currsize == 0\n"
        "assert not any(m == 'worker' or m.startswith('worker.') for m in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_DEFAULT_QUEUE": "from-env"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
