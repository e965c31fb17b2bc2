"""Weights & Biases logging: a resumed run continues its wandb run, a replaced one starts another, and a
wandb that is missing or does not start ends with one line and leaves the run dir as it was.

The tests with a stand-in module run everywhere; those with the real wandb run where it is installed
(.ci/run installs both ends of the range pyproject.toml allows), offline, with no account and no network.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest

import train

from helpers import ROOT, args, child_env, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_WANDB = importlib.util.find_spec("wandb") is not None


class FakeWandb:
    """A stand-in for the wandb module: records each init and what each run logged."""

    def __init__(self, fail: Exception | None = None):
        self.inits: list[dict] = []
        self.logged: list[list[int]] = []
        self.fail = fail

    def init(self, **kw):
        self.inits.append(kw)
        if self.fail is not None:
            (Path(kw["dir"]) / "wandb").mkdir()  # as the real one does before it gives up
            (Path(kw["dir"]) / "wandb" / "debug.log").write_text("started")
            raise self.fail
        steps: list[int] = []
        self.logged.append(steps)
        return types.SimpleNamespace(log=lambda values, step: steps.append(step), finish=lambda: None)


@pytest.fixture
def fake_wandb(monkeypatch):
    def install(fail: Exception | None = None) -> FakeWandb:
        fake = FakeWandb(fail)
        monkeypatch.setitem(sys.modules, "wandb", fake)
        return fake

    return install


def test_a_resumed_run_continues_its_wandb_run_and_a_replaced_one_starts_another(data_dir, tmp_path, fake_wandb):
    fake = fake_wandb()
    run = ["--run.wandb=offline", "--train.log_interval=1"]
    assert train.main(args(data_dir, tmp_path, "w", *run, steps=2)) == 0
    assert train.main(args(data_dir, tmp_path, "w", *run, "--run.resume=true", steps=4)) == 0
    first, resumed = fake.inits
    kept = (tmp_path / "w" / "wandb_id.txt").read_text().strip()
    assert first["id"] == resumed["id"] == kept and all(c["resume"] == "allow" for c in fake.inits)
    assert len(kept) == 8 and kept.isalnum() and kept.islower()
    assert fake.logged[0][0] == 0 and fake.logged[0][-1] == 2  # the evaluation at step 0, then steps 1-2
    assert fake.logged[1][0] == 3 and fake.logged[1][-1] == 4  # the continuation starts where it stopped
    assert train.main(args(data_dir, tmp_path, "w", *run, "--run.overwrite=true", steps=2)) == 0
    replaced = fake.inits[-1]["id"]
    assert replaced != kept and (tmp_path / "w" / "wandb_id.txt").read_text().strip() == replaced


def test_wandb_asked_for_but_not_installed_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert train.main(args(data_dir, tmp_path, "n", "--run.wandb=offline", steps=2)) == 2
    assert "wandb is not installed" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "n").exists()


def test_wandb_that_does_not_start_leaves_no_run_dir_and_the_retry_runs(data_dir, tmp_path, fake_wandb, capsys):
    fake_wandb(fail=RuntimeError("no route to host\nsecond line"))
    assert train.main(args(data_dir, tmp_path, "f", "--run.wandb=online", steps=2)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "wandb did not start (RuntimeError: no route to host second line)" in line
    assert "--run.wandb=disabled" in line
    assert not (tmp_path / "f").exists()
    assert train.main(args(data_dir, tmp_path, "f", steps=2)) == 0


def test_wandb_that_does_not_start_changes_nothing_in_a_run_it_resumes(data_dir, tmp_path, fake_wandb, capsys):
    assert train.main(args(data_dir, tmp_path, "r", steps=2)) == 0
    before = snapshot(tmp_path)
    fake_wandb(fail=RuntimeError("login required"))
    assert train.main(args(data_dir, tmp_path, "r", "--run.wandb=online", "--run.resume=true", steps=4)) == 2
    assert "wandb did not start" in one_line_error(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "r" / "wandb").exists()


# ------------------------------------------------------------------------------------ the real wandb


def wandb_env(home: Path) -> dict[str, str]:
    """No account, no network: every wandb folder in ``home``, no key, and a server address that refuses."""
    home.mkdir(exist_ok=True)  # wandb warns about a WANDB_DIR that does not exist
    env = {k: v for k, v in child_env().items() if not k.startswith("WANDB_")}
    folders = {f"WANDB_{k}_DIR": str(home / k.lower()) for k in ("CONFIG", "CACHE", "DATA", "ARTIFACT")}
    return {**env, **folders, "HOME": str(home), "WANDB_DIR": str(home), "WANDB_BASE_URL": "http://127.0.0.1:9"}


def train_process(argv: list[str], home: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *argv]
    # stdin closed: wandb must not wait for a login prompt
    env = wandb_env(home)
    return subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install -e '.[wandb]')")
def test_the_installed_wandb_logs_offline_and_a_resume_continues_the_same_run(data_dir, tmp_path):
    home = tmp_path / "home"
    run = args(data_dir, tmp_path, "real", "--run.wandb=offline", steps=1)
    first = train_process(run, home)
    assert first.returncode == 0, first.stderr
    resumed = train_process([*run, "--run.resume=true", "--train.max_steps=2"], home)
    assert resumed.returncode == 0, resumed.stderr
    run_dir = tmp_path / "real"
    kept = (run_dir / "wandb_id.txt").read_text().strip()
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{kept}") for name in offline), offline
    assert all((run_dir / "wandb" / name / f"run-{kept}.wandb").is_file() for name in offline)


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install -e '.[wandb]')")
def test_the_installed_wandb_online_without_an_account_is_one_line_and_leaves_nothing(data_dir, tmp_path):
    home = tmp_path / "home"
    proc = train_process(args(data_dir, tmp_path, "online", "--run.wandb=online", steps=1), home)
    assert proc.returncode == 2
    assert "wandb did not start" in one_line_error(proc.stderr)
    assert not (tmp_path / "online").exists()
