"""Without the sweeps extra: commands start without Hydra's plugin warning, and asking for
the Optuna sweeper stops with one line that says what to install.

Each command runs in a Python that cannot import what the extra brings: a
``sitecustomize.py`` put first on PYTHONPATH blocks ``optuna`` (``no_optuna``), and also
hides the installed Hydra plugins from Hydra's scan (``no_extra``: hydra-optuna-sweeper
and the launchers, as after ``pip install faceparse`` without ``[sweeps]``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

BLOCKER = '''
import importlib.abc
import os
import sys

BLOCKED = {blocked!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
if {hide_plugins!r}:
    import hydra_plugins

    hydra_plugins.__path__ = [p for p in hydra_plugins.__path__
                              if not os.path.isdir(os.path.join(p, "hydra_optuna_sweeper"))]
'''

PLUGINS = ("hydra_plugins.hydra_optuna_sweeper", "hydra_plugins.hydra_joblib_launcher",
           "hydra_plugins.hydra_submitit_launcher")
MODES = {"no_optuna": (("optuna",), False), "no_extra": (("optuna", *PLUGINS), True)}


def environment_without(mode: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a Python without optuna, or without the whole sweeps extra."""
    blocked, hide_plugins = MODES[mode]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked,
                                                          hide_plugins=hide_plugins))
    path = [str(site), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))


@pytest.fixture(params=list(MODES))
def without_sweeps(request, tmp_path: Path) -> dict[str, str]:
    """Either environment: for the quick checks of the plugin scan."""
    return environment_without(request.param, tmp_path)


@pytest.fixture
def without_extra(tmp_path: Path) -> dict[str, str]:
    """``pip install faceparse`` without ``[sweeps]``: for the commands (~10 s each)."""
    return environment_without("no_extra", tmp_path)


def python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO_ROOT)


MESSAGE = ("needs the sweeps extra, not installed here (No module named 'optuna'): "
           "pip install 'faceparse[sweeps]' (from a checkout: pip install -e '.[sweeps]')")

SCAN = """
import json
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
def ours(kind):
    return sorted(c.__name__ for c in Plugins.instance().discover(kind)
                  if c.__module__.startswith("hydra_plugins.faceparse_sweepers"))
sweepers = [c.__name__ for c in Plugins.instance().discover(Sweeper)]
print(json.dumps({"ours": ours(Sweeper), "launchers": ours(Launcher), "sweepers": sweepers}))
"""
# the submitit launchers that go on past a killed job, where hydra-submitit-launcher is
LAUNCHERS = ["LocalLauncher", "SlurmLauncher"]


def test_plugin_scan_registers_nothing_and_warns_nothing(without_sweeps, request) -> None:
    # with optuna importable, ours would be ["ResumableOptunaSweeper"]: the blocker works
    result = python(without_sweeps, "-c", SCAN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Error importing" not in result.stderr, result.stderr[-2000:]
    # the stand-in for the plugin's class is no Hydra plugin: no second sweeper is offered
    found = json.loads(result.stdout)
    assert found["ours"] == []
    # ours come with hydra-submitit-launcher, hidden with the rest of the extra
    mode = request.node.callspec.params["without_sweeps"]
    assert found["launchers"] == ([] if mode == "no_extra" else LAUNCHERS)

    code = ("from hydra_plugins.faceparse_sweepers.resumable_optuna import "
            "ResumableOptunaSweeper as S\ntry:\n    S()\nexcept ImportError as e:\n    print(e)")
    built = python(without_sweeps, "-c", code)
    assert built.stdout.strip() == f"the Optuna sweeper {MESSAGE}", built.stderr[-2000:]


def test_plugin_scan_finds_the_sweeper_with_the_extra() -> None:
    pytest.importorskip("optuna")
    result = python(dict(os.environ), "-c", SCAN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Error importing" not in result.stderr
    found = json.loads(result.stdout)
    assert found["ours"] == ["ResumableOptunaSweeper"]
    assert found["launchers"] == LAUNCHERS
    assert "ResumableOptunaSweeper" in found["sweepers"]


def test_a_command_starts_without_the_plugin_warning(without_extra) -> None:
    result = python(without_extra, "-m", "faceparse.train", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Error importing" not in result.stderr, result.stderr[-2000:]
    assert "optimized_metric: val/f1_mean" in result.stdout  # the config was composed


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_the_optuna_search_asks_for_the_extra(without_extra, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = python(without_extra, "-m", "faceparse.train", "-m", "hparams_search=optuna",
                    "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "Error importing" not in out, out[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: hparams_search=optuna {MESSAGE}"]
    assert not sweep.exists()  # stopped before Hydra started the sweep


@pytest.mark.parametrize("overrides, refused", [
    (["hparams_search=optuna"], "hparams_search=optuna"),
    (["-m", "+hparams_search=optuna", "seed=1"], "+hparams_search=optuna"),
    (["hydra/sweeper=resumable_optuna"], "hydra/sweeper=resumable_optuna"),
    (["hydra/sweeper=optuna"], "hydra/sweeper=optuna"),
    (["hparams_search=null", "hydra/sweeper=basic", "optimizer.lr=1e-3", "--cfg", "job"],
     None),
])
def test_which_command_lines_are_refused(monkeypatch, capsys, overrides, refused) -> None:
    from faceparse.cli import refuse_missing_sweeps
    from hydra_plugins.faceparse_sweepers import resumable_optuna

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(resumable_optuna, "MISSING", "No module named 'optuna'")
    if refused is None:
        refuse_missing_sweeps(overrides)
    else:
        with pytest.raises(SystemExit) as exit_:
            refuse_missing_sweeps(overrides)
        assert exit_.value.code == 1
        assert capsys.readouterr().err == f"error: {refused} {MESSAGE}\n"
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the exception itself, for its trace
        with pytest.raises(ImportError, match=r"pip install 'faceparse\[sweeps\]'"):
            refuse_missing_sweeps(overrides)
    monkeypatch.setattr(resumable_optuna, "MISSING", None)  # with the extra: nothing refused
    refuse_missing_sweeps(overrides)


def user_configs(folder: Path) -> Path:
    """A user's config folder (for ``--config-dir`` or ``hydra.searchpath``) whose files
    select the sweeper themselves: the command line never names it."""
    experiments = folder / "experiment"
    experiments.mkdir(parents=True)
    for name, line in (("my_search", "override /hydra/sweeper: resumable_optuna"),
                       ("my_optuna", "override /hydra/sweeper: optuna"),
                       ("my_plain", "override /optimizer: sgd")):
        (experiments / f"{name}.yaml").write_text(f"# @package _global_\ndefaults:\n  - {line}\n")
    (folder / "my_train.yaml").write_text(
        "defaults:\n  - train\n  - override hparams_search: optuna\n  - _self_\n")
    return folder


def test_a_config_that_selects_the_search_asks_for_the_extra(without_extra,
                                                              tmp_path: Path) -> None:
    """As a user runs an experiment of their own that turns the search on."""
    configs, sweep = user_configs(tmp_path / "configs"), tmp_path / "sweep"
    result = python(without_extra, "-m", "faceparse.train", "-m",
                    f"hydra.searchpath=[file://{configs}]", "experiment=my_search",
                    f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "Error importing" not in out, out[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # without the plugin, composing stops at its own config: the sweeper the file selects
    assert lines == [f"error: the Optuna sweeper that the config selects "
                     f"(hydra/sweeper=optuna) {MESSAGE}"]
    assert not sweep.exists()


@pytest.mark.parametrize("argv, refused", [
    (["-m", "--config-dir", "{configs}", "experiment=my_search"], "hydra/sweeper=resumable_optuna"),
    (["hydra.searchpath=[file://{configs}]", "experiment=my_optuna"], "hydra/sweeper=optuna"),
    (["--config-dir={configs}", "-cn", "my_train", "seed=1,2"], "hparams_search=optuna"),
    (["--config-dir", "{configs}", "experiment=my_plain", "-m", "seed=1,2"], None),
    (["experiment=quickstart", "--cfg", "job"], None),
    (["data=no_such_dataset"], None),  # Hydra's own error, not ours
])
def test_which_configs_are_refused(monkeypatch, capsys, tmp_path: Path, argv, refused) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # its configs are composed
    from hydra.core.plugins import Plugins

    from faceparse.cli import refuse_configured_sweeper
    from hydra_plugins.faceparse_sweepers import resumable_optuna

    Plugins.instance()  # its first scan runs every plugin module again: MISSING as imported
    configs = user_configs(tmp_path / "configs")
    argv = [arg.format(configs=configs) for arg in argv]
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(resumable_optuna, "MISSING", "No module named 'optuna'")
    if refused is None:
        refuse_configured_sweeper(argv, "train", test_which_configs_are_refused)
    else:
        with pytest.raises(SystemExit) as exit_:
            refuse_configured_sweeper(argv, "train", test_which_configs_are_refused)
        assert exit_.value.code == 1
        assert capsys.readouterr().err == (f"error: the Optuna sweeper that the config "
                                           f"selects ({refused}) {MESSAGE}\n")
    monkeypatch.setattr(resumable_optuna, "MISSING", None)  # with the extra: nothing refused
    refuse_configured_sweeper(argv, "train", test_which_configs_are_refused)
