"""A study folder made by hand, as ``vae_study run`` leaves it, without Ray: study.yaml,
results.csv, Ray's per-trial result.json and (for some trials) real checkpoints."""

from __future__ import annotations

import atexit
import copy
import gzip
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from conftest import write_mnist
from vae_study import metrics as M
from vae_study.config.data import DATA_PATH_KEYS
from vae_study.config.run import RunConfig, replace_keys
from vae_study.config.schema import to_dict
from vae_study.config.study import study_from_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.core.train import fit
from vae_study.files import write_json
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    PENDING,
    RESULTS_FILE,
    RUNNING,
    STOPPED,
    StudyLayout,
)
from vae_study.study.trainable import HOLD_ENV


def make_study_folder(
    tmp: Path,
    data_root: Path,
    *,
    n_trials: int = 6,
    epochs: int = 3,
    checkpoints: int = 3,
    statuses: list[str] | None = None,
    name: str = "made",
    seed: int = 0,
    offset: float = 0.0,
) -> Path:
    """A study folder of ``n_trials`` over beta and latent size; the first ``checkpoints``
    completed trials are trained for real (tiny), the others get plausible numbers (their
    distortions raised by ``offset``)."""
    rng = random.Random(seed)
    raw = {
        "name": name,
        "output": {"dir": str(tmp / "runs")},
        "data": {"root": str(data_root), "val_size": 50},
        "model": {"hidden": [32], "latent_dim": 2},
        "train": {"epochs": epochs, "batch_size": 64, "device": "cpu"},
        "eval": {"k": 8, "surgery_examples": 60},
        "search": {
            "num_trials": n_trials,
            "max_concurrent": 1,
            "space": {
                "train.beta": {"log_uniform": [0.1, 10.0]},
                "model.latent_dim": {"choice": [2, 4]},
            },
        },
    }
    study = study_from_dict(raw)
    layout = StudyLayout.of(tmp / "runs", name)
    folder = layout.folder
    folder.mkdir(parents=True)
    write_yaml(layout.study_file, study.to_dict())
    statuses = statuses or [COMPLETED] * n_trials
    rows = []
    trained = 0
    for i in range(n_trials):
        trial_id = f"{i:08x}"
        beta = math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
        latent = rng.choice([2, 4])
        status = statuses[i % len(statuses)]
        trial_dir = layout.trial_dir(trial_id)
        trial_dir.mkdir(parents=True)
        row = {
            "trial_id": trial_id,
            "optuna_trial": i,
            "status": status,
            "train.beta": beta,
            "model.latent_dim": latent,
        }
        if status == COMPLETED and trained < checkpoints:
            trained += 1
            cfg = study.trial_config({"train.beta": beta, "model.latent_dim": latent})
            history, final = fit_once(cfg, trial_dir / "work")
            (trial_dir / "work" / "checkpoint").rename(trial_dir / "checkpoint_000002")
        else:
            done = {COMPLETED: epochs, STOPPED: 1, RUNNING: 2, FAILED: 2, PENDING: 0}[status]
            rate = 30.0 / (1 + beta) + rng.uniform(0, 2)
            history = []
            for e in range(1, done + 1):
                d = offset + 200.0 / e + 100 / (1 + rate)
                history.append(
                    {M.EPOCH: e, M.VAL_RATE: rate, M.VAL_DISTORTION: d, M.VAL_NEG_ELBO: rate + d}
                )
            final = {}
            if status == COMPLETED:
                d = history[-1][M.VAL_DISTORTION]
                q = study.base.quantity  # grey-level Bernoulli here: ce_bound, not nll
                final = {
                    M.TEST_RATE: rate,
                    M.TEST_DISTORTION: d,
                    M.TEST_NEG_ELBO: rate + d,
                    M.bound_key("test", q): rate + d - 3,
                    M.TEST_BOUND_GAP: 3.0,
                    M.TEST_NLL_EXAMPLES: 100,
                    M.bound_key("val", q): rate + d - 3,
                    M.TEST_ACTIVE_UNITS: latent,
                    M.TEST_MUTUAL_INFO: min(rate, 6.0),
                    M.TEST_MARGINAL_KL: rate - min(rate, 6.0),
                    M.TEST_KL_PER_DIM: [rate / latent] * latent,
                }
            if status == FAILED:
                row[R.ERROR_KEY] = "training diverged: the loss is nan at epoch 2, batch 3"
        with open(layout.result_file(trial_id), "w") as f:
            for h in history:
                f.write(json.dumps({**h, "training_iteration": h[M.EPOCH]}) + "\n")
        if history:  # the driver copies the last report's validation terms into the row
            row.update(
                {k: history[-1][k] for k in (M.EPOCH, M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION)}
            )
        row.update({k: v for k, v in final.items()})
        rows.append(row)
    R.write_results(
        layout.results_file,
        rows,
        ["train.beta", "model.latent_dim"],
        [(o.metric, o.mode) for o in study.search.objectives],
    )
    return folder


# ---------------------------------------------------------------------------------------
# One training per configuration per test session.

_TRAINED: dict[str, tuple[Path, list[dict], dict]] = {}  # key -> (fit folder, history, final)
_TRAINED_DIR: list[Path] = []  # where those fit folders are (made at the first training)


def fit_once(config: RunConfig, out_dir: Path) -> tuple[list[dict], dict]:
    """What ``fit(config, out_dir=out_dir)`` leaves in the new folder ``out_dir``, and its
    (history, final), training each configuration once per test session.

    A configuration trained before in the session (the same run configuration but for its
    paths, and data files of the same contents: ``fit_key``) is copied from that training,
    with the paths in its files (``config.yaml``, the checkpoint's state and config) set to
    ``config``'s, as fit writes them: the same weights, optimizer state, histories and
    numbers, and the same bytes but for ``state.pt``'s (saved again with its new paths,
    as every ``torch.save`` does it draws a new serialization id)."""
    key = fit_key(config)
    if key not in _TRAINED:
        if not _TRAINED_DIR:
            _TRAINED_DIR.append(Path(tempfile.mkdtemp(prefix="vae_study_fit_once_")))
            atexit.register(shutil.rmtree, _TRAINED_DIR[0], True)
        folder = _TRAINED_DIR[0] / key
        res = fit(config, out_dir=folder)
        _TRAINED[key] = (folder, copy.deepcopy(res.history), copy.deepcopy(res.final))
    folder, history, final = _TRAINED[key]
    shutil.copytree(folder, out_dir)
    with_paths_of(config, out_dir)
    return copy.deepcopy(history), copy.deepcopy(final)


def with_paths_of(config: RunConfig, out_dir: Path) -> None:
    """Write ``config`` (its paths) into the fit folder ``out_dir`` where fit writes it: its
    ``config.yaml`` and its checkpoint (``state.pt`` and the checkpoint's ``config.yaml``)."""
    from vae_study.core import checkpoint as ckpt
    from vae_study.run_files import CHECKPOINT_DIR, CONFIG_FILE

    write_yaml(out_dir / CONFIG_FILE, to_dict(config))
    if ckpt.exists(out_dir / CHECKPOINT_DIR):
        state = ckpt.load(out_dir / CHECKPOINT_DIR)
        if state.config != to_dict(config):  # saved again: torch.save draws a new file id
            state.config = to_dict(config)
            ckpt.save(out_dir / CHECKPOINT_DIR, state)


def fit_key(config: RunConfig) -> str:
    """What determines the bytes ``fit`` trains from ``config``: the configuration without
    its paths, and the contents of the data files they name (a gzip file's data, not its
    header's time stamp)."""
    data = to_dict(config)["data"]
    paths = [data.pop(k) for k in ("root", *DATA_PATH_KEYS) if data.get(k) is not None]
    digest = hashlib.sha256(json.dumps({**to_dict(config), "data": data}, sort_keys=True).encode())
    for path in map(Path, paths):
        for f in sorted(p for p in [path, *path.rglob("*")] if p.is_file()):
            digest.update(str(f.relative_to(path) if f != path else f.name).encode())
            digest.update(gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes())
    return digest.hexdigest()[:24]


def tiny_study(tmp_path: Path, **over) -> dict:
    """A small study over tiny MNIST-format data (written once under tmp_path); ``over``
    sets dotted keys, e.g. ``**{"search.num_trials": 2}``."""
    root = tmp_path / "data"
    if not (root / "mnist").exists():
        write_mnist(root, n_train=600, n_test=200)
    raw = {
        "name": "tiny",
        "output": {"dir": str(tmp_path / "runs")},
        # Dynamic binarization: a real likelihood, so the bound is val/nll and test/nll.
        "data": {"root": str(root), "val_size": 100, "binarize": "dynamic"},
        "model": {"hidden": [32], "latent_dim": 2},
        "train": {"epochs": 2, "batch_size": 100, "device": "cpu"},
        "eval": {"k": 10, "surgery_examples": 100, "val_k": 10, "val_examples": 100},
        "search": {
            "algorithm": "tpe",
            "num_trials": 4,
            "max_concurrent": 2,
            "space": {
                "train.beta": {"log_uniform": [0.1, 10.0]},
                "model.latent_dim": {"choice": [2, 4]},
            },
        },
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},  # no GPU here: CPU
        "ray": {"dashboard": False},
        "report": {"enabled": False},
    }
    for dotted, value in over.items():
        section, _, key = dotted.partition(".")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    return raw


def write_study(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def optuna_states(folder: Path, name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=StudyLayout(folder).storage_url)
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def small_run_config(root: Path, **keys) -> RunConfig:
    """A tiny MLP run on the tiny MNIST-format files under ``root``, on the CPU, with cheap
    evaluation; ``keys`` set dotted keys (``**{"train.epochs": 4}``)."""
    base = {
        "data.root": str(root),
        "data.val_size": 50,
        "model.latent_dim": 4,
        "model.hidden": [32],
        "train.epochs": 2,
        "train.batch_size": 32,
        "train.device": "cpu",
        "eval.k": 8,
        "eval.val_k": 8,
        "eval.surgery_examples": 50,
    }
    return replace_keys(RunConfig(), {**base, **keys})


def same_weights(a, b) -> bool:
    """The two models' weights are equal to the bit (wherever they live)."""
    return all(
        torch.equal(x.cpu(), y.cpu())
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# ---------------------------------------------------------------------------------------
# A real driver (``python -m vae_study run``) in a subprocess, for the fault tests.


def slow_trials(tmp_path: Path, *, epochs: int = 30, **over) -> dict:
    """A study of trials of a few seconds each, long enough to be caught half-way."""
    if not (tmp_path / "big" / "mnist").exists():
        write_mnist(tmp_path / "big", n_train=3000, n_test=200)
    keys = {
        "train.epochs": epochs,
        "model.hidden": [256],
        "data.root": str(tmp_path / "big"),
        "search.num_trials": 4,
        "search.max_concurrent": 1,
    }
    keys.update(over)
    return tiny_study(tmp_path, **keys)


def start_driver(tmp_path: Path, path: Path, log_name: str, env: dict | None = None):
    """``vae_study run <path> --no-report`` in its own session; (process, its log file)."""
    log = open(tmp_path / log_name, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


class Hold:
    """Trials of a driver started with ``env`` wait after reporting ``epoch`` (of the listed
    configuration ids, or of every one) until ``release``: a fault is injected where the
    test wants it, however fast the machine (``trainable.hold_point``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "hold.json"
        self.env = {HOLD_ENV: str(self.path)}
        self.going: int | None = None  # the configuration let_the_first_go let through

    def at(self, epoch: int, configs: list[int] | None = None) -> None:
        spec: dict = {"epoch": epoch}
        if configs is not None:
            spec["configs"] = configs
        write_json(self.path, spec)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def let_the_first_go(self, table, epoch: int, n_configs: int) -> None:
        """With every configuration held at ``epoch`` (``at(epoch)``): once one is seen there
        in ``table`` (results.csv) and none has completed, let it go on and hold the rest;
        the next one to start then waits at ``epoch`` while the first completes."""
        if self.going is not None:
            return
        done = table[table["status"] == COMPLETED]
        there = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= epoch)]
        if done.empty and not there.empty:
            self.going = int(there["config_id"].iloc[0])
            self.at(epoch, configs=[c for c in range(n_configs) if c != self.going])


def read_table(folder: Path):
    """The study's results.csv, or None while it is missing or being written."""
    try:
        return R.read_results(folder / RESULTS_FILE)
    except Exception:
        return None


def wait_for(proc, log, condition, timeout: float = 240.0, what: str = "the fault"):
    """Poll ``condition`` until it returns something true while the driver runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if proc.poll() is not None:
            log.flush()
            pytest.fail(
                f"the driver ended before {what} could be injected:\n"
                + Path(log.name).read_text()[-3000:]
            )
        found = condition()
        if found:
            return found
    pytest.fail(f"the condition for {what} never held")


# ---------------------------------------------------------------------------------------
# Replicated studies: one results.csv row per member (a seed of a configuration).


def write_members(folder: Path, members: list[dict], *, seed_offset: int = 0) -> Path:
    """Write ``members`` as the results.csv of the study (or confirmation) folder
    ``folder``, one row per member as a replicated study writes it: each dict holds
    ``config_id``, ``replicate``, ``status`` and any params and metrics; ``trial_id``
    (one Ray trial per configuration), ``member``, ``optuna_trial`` and ``seed`` (train.seed
    0 + ``seed_offset`` + replicate) are filled in. Returns the file."""
    from vae_study.records.replicates import CONFIG_KEY, MEMBER_KEY, REPLICATE_KEY, SEED_KEY

    rows = []
    for m in members:
        row = {
            "trial_id": f"c{int(m[CONFIG_KEY]):05d}",
            "optuna_trial": m[CONFIG_KEY],
            MEMBER_KEY: m[REPLICATE_KEY],
            SEED_KEY: seed_offset + m[REPLICATE_KEY],
            **m,
        }
        rows.append({k: R._cell(v) for k, v in row.items()})
    keys = [k for k in ("train.beta", "model.latent_dim") if any(k in r for r in rows)]
    extra = [k for r in rows for k in r if k not in R.columns(keys)]
    cols = R.columns(keys) + list(dict.fromkeys(extra))
    path = StudyLayout(folder).results_file
    path.parent.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def attempts(folder: Path, config_id: int, replicate: int = 0) -> list[dict]:
    """The starts of one member's training (pid, first epoch), from its file in the record."""
    from vae_study.records import record

    info = record.read_info(StudyLayout(folder).record_file(int(config_id), int(replicate)))
    return list(info.get(record.INFO_ATTEMPTS) or [])
