"""The Python API a notebook uses: what ``import vae_study`` gives, loads and leaves alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vae_study
from conftest import write_mnist
from study_factory import make_study_folder

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def test_import_loads_no_study_dependency_and_the_study_functions_load_on_use():
    r = _python(
        "import sys, vae_study\n"
        "heavy = ('ray', 'optuna', 'matplotlib', 'pandas')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(vae_study.load_study.__module__, vae_study.run_study.__module__,\n"
        "      vae_study.build_report.__module__, vae_study.load_folder.__module__)\n"
        "print('ray' in sys.modules, vae_study.metrics.VAL_NLL)\n"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "[]"  # nothing heavy imported by the package itself
    assert lines[1].split() == [
        "vae_study.config.study",
        "vae_study.study.driver",
        "vae_study.report.page",
        "vae_study.records.folder",
    ]
    assert lines[2] == "True val/nll"  # run_study brought Ray only when asked for
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        vae_study.nonsense  # noqa: B018


def test_building_a_report_leaves_a_notebooks_matplotlib_alone(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    folder = make_study_folder(tmp_path, root, n_trials=3, checkpoints=1)
    r = _python(
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure()\n"
        "import vae_study\n"
        f"out = vae_study.build_report({str(folder)!r}, {str(tmp_path / 'rep')!r})\n"
        "print(matplotlib.get_backend(), plt.get_fignums(), sorted(p.name for p in\n"
        "      out.glob('*.png'))[:1])\n"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    backend, rest = r.stdout.split(" ", 1)
    assert backend == "svg" and rest.startswith("[1] ['")  # our figures never reach pyplot


def test_the_api_raises_instead_of_exiting(tmp_path):
    with pytest.raises(vae_study.ConfigError, match="train.beta"):
        (tmp_path / "s.yaml").write_text(
            "name: s\ntrain: {beta: -1}\nsearch: {space: {train.lr: {choice: [0.001]}}}\n"
        )
        vae_study.load_study(tmp_path / "s.yaml")
    with pytest.raises(vae_study.VaeStudyError, match="is not a study folder"):
        vae_study.load_folder(tmp_path)
