"""The command line: the fit command end to end, and one line + exit 2 for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vae_study.cli import main

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path, root, extra: str = "") -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: tiny\n"
        f"data: {{root: {root}, val_size: 50}}\n"
        "model: {latent_dim: 3, hidden: [16]}\n"
        "train: {epochs: 2, batch_size: 64, device: cpu}\n"
        "eval: {k: 4, surgery_examples: 50}\n" + extra
    )
    return path


def test_fit_writes_metrics_final_and_checkpoint(tmp_path, mnist_root, capsys):
    out = tmp_path / "out"
    assert (
        main(
            ["fit", str(_study(tmp_path, mnist_root)), "--out", str(out), "--set", "train.beta=0.5"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "test/ce_bound" in printed
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert {
        "epoch",
        "train/loss",
        "val/neg_elbo",
        "val/rate",
        "val/distortion",
        "time/epoch_s",
    } <= set(rows[0])
    final = json.loads((out / "final.json").read_text())
    assert final["test/ce_bound"] > 0 and "test/nll" not in final  # grey levels: no NLL
    assert "beta: 0.5" in (out / "config.yaml").read_text()


def test_fit_again_resumes_and_fresh_restarts(tmp_path, mnist_root, capsys):
    study = _study(tmp_path, mnist_root)
    out = tmp_path / "out"
    assert main(["fit", str(study), "--out", str(out), "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["fit", str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "epoch   1/2" not in printed
    assert main(["fit", str(study), "--out", str(out), "--fresh"]) == 0
    assert "epoch   1/2" in capsys.readouterr().out
    assert main(["fit", str(study), "--out", str(out), "--set", "model.latent_dim=5"]) == 2
    assert "model.latent_dim: 3 -> 5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "train.beta=0"], "train.beta: got 0.0"),
        (["--set", "train.k=0"], "train.k: got 0"),
        (["--set", "model.latent_dim=0"], "model.latent_dim"),
        (["--set", "data.dataset=imagenet"], "data.dataset"),
        (["--set", "train.unknown=1"], "unknown key train.unknown"),
        (["--set", "oops"], "expected section.key=value"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, mnist_root, capsys, args, fragment):
    out = tmp_path / "never"
    code = main(["fit", str(_study(tmp_path, mnist_root)), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_data_is_one_line_naming_the_paths(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.mnist as tvm

    monkeypatch.setattr(tvm.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    code = main(["fit", str(_study(tmp_path, tmp_path / "nothing")), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "nothing" / "mnist") in err
    assert "Traceback" not in err


def test_python_dash_m_and_console_script(tmp_path, mnist_root):
    study = _study(tmp_path, mnist_root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "vae_study", "fit", str(study), "--set", "train.beta=-1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "train.beta" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(["vae-study", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "fit" in r.stdout


def test_the_training_core_and_fit_import_neither_ray_nor_optuna():
    code = (
        "import sys, vae_study, vae_study.core.train, vae_study.core.evaluate, vae_study.cli; "
        "vae_study.cli.build_parser(); "
        "bad = [m for m in ('ray', 'optuna', 'matplotlib', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("search: {num_trials: 2, space: {}}\n", "search.space: empty"),
        (
            "search: {num_trials: 2, max_concurrent: 3, space: "
            "{train.beta: {uniform: [0.5, 2]}}}\n",
            "more than search.num_trials",
        ),
        ("search: {space: {train.beta: {log_uniform: [0, 2]}}}\n", "log scale needs low > 0"),
        (
            "search: {space: {train.beta: {choice: [1]}}, objectives: [test/elbo]}\n",
            "unknown metric 'test/elbo'",
        ),
        (
            "search: {space: {train.beta: {choice: [1]}}}\nresources: {gpus_per_trial: 2.5}\n",
            "resources.gpus_per_trial: got 2.5",
        ),
        ("search: {space: {train.beta: {choice: [1]}}}\ntrain: [1\n", "not valid YAML"),
    ],
)
def test_run_refuses_bad_study_files_before_starting_anything(tmp_path, capsys, extra, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\noutput: {{dir: {tmp_path / 'runs'}}}\n" + extra)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_fresh_never_deletes_a_folder_fit_did_not_make(tmp_path, mnist_root, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["fit", str(_study(tmp_path, mnist_root)), "--out", str(precious), "--fresh"]) == 2
    assert "not a fit output folder" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"


# --- issue 19: fit touches only folders it made and marked ------------------------------------


def test_fresh_never_deletes_another_tools_config_and_metrics(tmp_path, mnist_root, capsys):
    other = tmp_path / "other_tool"
    other.mkdir()
    (other / "config.yaml").write_text("learning_rate: 0.1\n")
    (other / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    (other / "weights.bin").write_bytes(b"\x00" * 16)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    study = _study(tmp_path, mnist_root)
    assert main(["fit", str(study), "--out", str(other), "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "not a fit output folder" in err and "in the way" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


def test_fresh_refuses_exactly_config_and_metrics_of_another_tool(tmp_path, mnist_root, capsys):
    other = tmp_path / "other_tool"
    other.mkdir()
    (other / "config.yaml").write_text("learning_rate: 0.1\n")
    (other / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    assert main(["fit", str(_study(tmp_path, mnist_root)), "--out", str(other), "--fresh"]) == 2
    assert "config.yaml is in the way" in capsys.readouterr().err
    assert (other / "config.yaml").read_text() == "learning_rate: 0.1\n"


def test_fresh_waits_for_the_data_before_deleting(tmp_path, mnist_root, capsys):
    study = _study(tmp_path, mnist_root)
    out = tmp_path / "out"
    assert main(["fit", str(study), "--out", str(out), "--set", "train.epochs=1"]) == 0
    assert json.loads((out / "vae_study.json").read_text())["kind"] == "fit"
    before = (out / "checkpoint" / "state.pt").read_bytes()
    capsys.readouterr()
    missing = ["--set", f"data.root={tmp_path / 'nowhere'}"]
    assert main(["fit", str(study), "--out", str(out), "--fresh", *missing]) == 2
    assert (out / "checkpoint" / "state.pt").read_bytes() == before


def test_a_fit_folder_without_a_marker_is_recognised_and_marked(tmp_path, mnist_root, capsys):
    study = _study(tmp_path, mnist_root)
    out = tmp_path / "out"
    assert main(["fit", str(study), "--out", str(out), "--set", "train.epochs=1"]) == 0
    (out / "vae_study.json").unlink()  # as an older vae_study left it
    capsys.readouterr()
    assert main(["fit", str(study), "--out", str(out)]) == 0
    assert "epoch   2/2" in capsys.readouterr().out
    assert (out / "vae_study.json").is_file()


def test_fit_refuses_an_empty_out(tmp_path, mnist_root, capsys):
    assert main(["fit", str(_study(tmp_path, mnist_root)), "--out", ""]) == 2
    assert "--out: got ''" in capsys.readouterr().err
