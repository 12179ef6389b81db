"""The daemon: lifecycle hooks, supervised services, clean signal shutdown."""

from __future__ import annotations

import signal
import subprocess
import time

import trio

from hyperhive_core import hookimpl
from hyperhive_core.daemon import run_hive


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def on_startup(self, hive):
        self.calls.append(("startup", hive.store.path.name))

    @hookimpl
    async def on_shutdown(self, hive):
        await trio.sleep(0)
        self.calls.append(("shutdown", hive.paths.root.name))


async def test_hook_on_startup(make_pm, make_config):
    recorder = Recorder()
    pm = make_pm(recorder=recorder)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        assert recorder.calls == [("startup", "hive.db")]
        assert hive.paths.database.exists()
        nursery.cancel_scope.cancel()


async def test_hook_on_shutdown(make_pm, make_config):
    recorder = Recorder()
    pm = make_pm(recorder=recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_hive, make_config(pm), pm)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [("startup", "hive.db"), ("shutdown", "state")]


async def test_hook_hive_services(make_pm, make_config, autojump_clock):
    """A crashing service is restarted with backoff; its sibling keeps running."""
    runs = {"flaky": 0, "steady": 0}

    class Services:
        @hookimpl
        def hive_services(self, hive):
            async def flaky(*, task_status=trio.TASK_STATUS_IGNORED):
                runs["flaky"] += 1
                task_status.started()
                if runs["flaky"] < 4:
                    raise RuntimeError(f"crash {runs['flaky']}")
                await trio.sleep_forever()

            async def steady(*, task_status=trio.TASK_STATUS_IGNORED):
                runs["steady"] += 1
                task_status.started()
                await trio.sleep_forever()

            return [flaky, steady]

    pm = make_pm(services=Services())
    async with trio.open_nursery() as nursery:
        await nursery.start(run_hive, make_config(pm), pm)
        await trio.sleep(60)
        assert runs == {"flaky": 4, "steady": 1}
        nursery.cancel_scope.cancel()


async def test_service_failing_before_ready_does_not_block_startup(make_pm, make_config):
    class Broken:
        @hookimpl
        def hive_services(self, hive):
            async def broken(*, task_status=trio.TASK_STATUS_IGNORED):
                raise OSError("port in use")

            return [broken]

    pm = make_pm(broken=Broken(), recorder=Recorder())
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(run_hive, make_config(pm), pm)
        nursery.cancel_scope.cancel()


def test_up_runs_until_sigterm_then_exits_zero(clean_env, tmp_path, hyperhive):
    (tmp_path / "hyperhive.toml").write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
    daemon = subprocess.Popen([hyperhive, "up"], env=clean_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "state" / "hive.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert daemon.poll() is None, "the daemon exited on its own"
        daemon.send_signal(signal.SIGTERM)
        log = daemon.communicate(timeout=20)[1]
        assert daemon.returncode == 0
    finally:
        daemon.kill()
        daemon.stderr.close()
    assert "hive up" in log
    assert "received SIGTERM, shutting down" in log


def test_up_with_missing_plugin_exits_nonzero_naming_it(clean_env, tmp_path, hyperhive):
    (tmp_path / "hyperhive.toml").write_text('[hive]\nplugins = ["nap", "warp-drive"]\n')
    result = subprocess.run([hyperhive, "up"], env=clean_env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "plugin 'warp-drive' is selected by [hive] plugins in hyperhive.toml but not installed" in result.stderr
