"""How every command ends: each verb (``fit``, ``run``, ``report``) under a set of hostile
inputs ends in one line of error on stderr with exit status 2, no traceback, nothing
written or deleted and no Ray started; a bug is one line too, and ``--debug`` shows its
traceback; a study whose every configuration failed exits 1. No Ray, tiny data: fast."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from study_factory import make_study_folder, tiny_study, write_study
from vae_study import cli, marker
from vae_study.config.study import study_from_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.errors import CheckpointError, ConfigError, StudyFailed
from vae_study.files import MAX_RECORD_JSON_BYTES, read_bounded
from vae_study.records import record
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, FAILED, RESULTS_FILE, STOPPED, StudyLayout
from vae_study.records.lock import release_folder
from vae_study.records.prepare import prepare_folder
from vae_study.records.stage import search_stage
from vae_study.study.outcome import check_not_all_failed


@pytest.fixture(autouse=True)
def _no_hang():
    """A read that blocks (a FIFO) fails the test after 60 s instead of hanging the suite."""

    def hung(signum, frame):
        raise AssertionError("the command blocked for 60 s")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def _tree(root: Path) -> dict[str, object]:
    """Every path under ``root`` with what it is: a regular file's bytes, else its kind."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode) and os.lstat(p).st_size < 2**20:
                out[str(p)] = p.read_bytes()
            else:
                out[str(p)] = (stat.S_IFMT(mode), os.lstat(p).st_size)
    return out


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _plain(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _user_folder(path: Path) -> Path:
    """A folder of the user's: their notes and an index.html of their own."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "index.html").write_text("<p>mine</p>\n")
    return path


def _exit_module(tmp: Path) -> str:
    (tmp / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n")
    return "exits_at_import:Model"


def _config_cases(tmp: Path, good: Path) -> dict[str, list[str]]:
    """Hostile config files, the same for fit and run: argv after the verb."""
    folder = tmp / "a_folder.yaml"
    folder.mkdir()
    garbage = tmp / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    listing = tmp / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    empty = tmp / "empty.yaml"
    empty.write_text("")
    link = tmp / "loop.yaml"
    link.symlink_to(link)
    return {
        "missing file": [str(tmp / "nope.yaml")],
        "a folder": [str(folder)],
        "a FIFO": [str(_fifo(tmp / "fifo.yaml"))],
        "/dev/zero": ["/dev/zero"],
        "a 5 MiB file": [str(_sparse(tmp / "huge.yaml", 5 * 2**20))],
        "binary garbage": [str(garbage)],
        "a YAML list": [str(listing)],
        "an empty file": [str(empty)],
        "a link to itself": [str(link)],
        "--set without =": [str(good), "--set", "train.lr"],
        "--set unknown key": [str(good), "--set", "train.nope=1"],
        "--set bad value": [str(good), "--set", "train.lr=-1"],
        "--set empty data.root": [str(good), "--set", 'data.root=""'],
        "data.root a file": [str(good), "--set", f"data.root={_plain(tmp / 'plain_root')}"],
        "model.arch exits at import": [str(good), "--set", f"model.arch={_exit_module(tmp)}"],
    }


def _fit_cases(tmp: Path, good: Path) -> dict[str, list[str]]:
    out = ["--out", str(tmp / "out")]
    cases = {label: [*argv, *out] for label, argv in _config_cases(tmp, good).items()}
    (tmp / "a_file").write_text("mine\n")
    cases |= {
        "--out ''": [str(good), "--out", ""],
        "--out a file": [str(good), "--out", str(tmp / "a_file")],
        "--out a user's folder": [str(good), "--out", str(_user_folder(tmp / "mine"))],
        "--fresh --out a user's folder": [str(good), "--fresh", "--out", str(tmp / "mine")],
    }
    return cases


def _run_cases(tmp: Path, good: Path) -> dict[str, list[str]]:
    cases = dict(_config_cases(tmp, good))
    (tmp / "a_file").write_text("mine\n")
    _user_folder(tmp / "runs" / "tiny")  # where the study's folder would be
    other = tmp / "other_runs" / "tiny"
    other.mkdir(parents=True)
    marker.write(other, marker.FIT)  # vae_study's, but a fit folder
    cases |= {
        "output.dir ''": [str(good), "--set", 'output.dir=""'],
        "output.dir a file": [str(good), "--set", f"output.dir={tmp / 'a_file'}"],
        "the study folder is a user's": [str(good)],
        "--fresh on a user's folder": [str(good), "--fresh"],
        "the study folder is a fit's": [str(good), "--set", f"output.dir={tmp / 'other_runs'}"],
        "report.dir a user's folder": [
            str(good),
            "--set",
            f"output.dir={tmp / 'fresh_runs'}",
            "--set",
            "report.enabled=true",
            "--set",
            f"report.dir={tmp / 'reports'}",
        ],
        "name with a slash": [str(good), "--set", "name=../up"],
    }
    _user_folder(tmp / "reports" / "tiny")
    return cases


def _report_cases(tmp: Path, study: Path) -> dict[str, list[str]]:
    (tmp / "a_file").write_text("mine\n")
    (tmp / "empty").mkdir()
    bad_yaml = tmp / "bad_study"
    bad_yaml.mkdir()
    (bad_yaml / "study.yaml").write_text("name: [unclosed\n")
    huge_table = tmp / "huge_table"
    huge_table.mkdir()
    (huge_table / "study.yaml").write_bytes((study / "study.yaml").read_bytes())
    _sparse(huge_table / RESULTS_FILE, 2**28 + 1)
    fifo_study = tmp / "fifo_study"
    fifo_study.mkdir()
    _fifo(fifo_study / "study.yaml")
    return {
        "missing folder": [str(tmp / "nope")],
        "a file": [str(tmp / "a_file")],
        "an empty folder": [str(tmp / "empty")],
        "a user's folder": [str(_user_folder(tmp / "mine"))],
        "study.yaml is not YAML": [str(bad_yaml)],
        "study.yaml is a FIFO": [str(fifo_study)],
        "results.csv over 256 MiB": [str(huge_table), "--out", str(tmp / "r1")],
        "--out ''": [str(study), "--out", ""],
        "--out a file": [str(study), "--out", str(tmp / "a_file")],
        "--out the study folder": [str(study), "--out", str(study)],
        "--out inside the study folder": [str(study), "--out", str(study / "trials")],
        "--out a user's folder": [str(study), "--out", str(_user_folder(tmp / "theirs"))],
    }


def _good_study(tmp: Path) -> Path:
    raw = tiny_study(tmp, **{"train.epochs": 1})
    return write_study(tmp, raw)


def _cases(verb: str, tmp: Path) -> list[str]:
    if verb == "report":
        study = make_study_folder(tmp, tmp / "data", n_trials=2, checkpoints=0)
        return _report_cases(tmp, study)
    good = _good_study(tmp)
    return (_fit_cases if verb == "fit" else _run_cases)(tmp, good)


def _labels(verb: str) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(_cases(verb, Path(tmp)))


CASES = [(verb, label) for verb in ("fit", "run", "report") for label in _labels(verb)]
# What some of the lines must say (the others name their own cause; all are one line).
SAYS = {
    "a FIFO": "not a regular file",
    "/dev/zero": "not a regular file",
    "a 5 MiB file": "more than the 4194304",
    "data.root a file": "data.root: ",
    "model.arch exits at import": "SystemExit",
    "the study folder is a user's": "index.html is in the way",
    "--fresh on a user's folder": "index.html is in the way",
    "--fresh --out a user's folder": "index.html is in the way",
    "the study folder is a fit's": "fit folder's marker",
    "study.yaml is a FIFO": "study.yaml is not a regular file",
    "results.csv over 256 MiB": "more than 268435456 bytes",
}


@pytest.mark.parametrize("verb, label", CASES, ids=[f"{v}: {c}" for v, c in CASES])
def test_every_verb_refuses_hostile_input_in_one_line_touching_nothing(
    tmp_path, monkeypatch, capsys, verb, label
):
    import ray

    monkeypatch.chdir(tmp_path)  # default folders (runs/, reports/) would appear here
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [verb, *_cases(verb, tmp_path)[label]]
    capsys.readouterr()
    before = _tree(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.startswith("vae-study: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and len(err) < 2100
    assert SAYS.get(label, "") in err
    assert _tree(tmp_path) == before  # nothing written, deleted or rewritten
    assert not ray.is_initialized()


def test_an_argument_error_is_argparse_usage_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "error: the following arguments are required" in err


@pytest.mark.parametrize("where", ["before the verb", "after the verb"])
def test_debug_shows_the_traceback_of_a_refusal(tmp_path, capsys, where):
    missing = str(tmp_path / "nope.yaml")
    argv = ["fit", missing, "--debug"]
    if where == "before the verb":
        argv = ["--debug", "fit", missing]
    with pytest.raises(ConfigError, match="does not exist"):
        cli.main(argv)
    assert cli.main(["fit", missing]) == 2  # without it: the one line
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "bug, words",
    [
        (ZeroDivisionError("division by zero"), "internal error, ZeroDivisionError"),
        (MemoryError(), "internal error, MemoryError"),
        (PermissionError(13, "Permission denied", "/x/results.csv"), "Permission denied"),
        (OSError(28, "No space left on device", "/x/optuna.db"), "is full"),
    ],
    ids=["a bug", "out of memory", "an unexpected OSError", "a full disk"],
)
def test_anything_else_is_one_line_exit_2_and_debug_raises_it(
    tmp_path, monkeypatch, capsys, bug, words
):
    def boom(args):
        raise bug

    monkeypatch.setattr(cli, "cmd_report", boom)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae-study: error: ") and words in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    if isinstance(bug, ZeroDivisionError):
        assert "--debug" in err and "bug of vae_study" in err
    with pytest.raises(type(bug)):
        cli.main(["report", str(tmp_path), "--debug"])


def test_a_study_whose_every_configuration_failed_is_exit_1(tmp_path, monkeypatch, capsys):
    import vae_study.study.driver as driver

    def all_failed(study, fresh=False):
        raise StudyFailed("all 2 of the study's configurations failed; results in x")

    monkeypatch.setattr(driver, "run_study", all_failed)
    path = _good_study(tmp_path)
    assert cli.main(["run", str(path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert err == "vae-study: error: all 2 of the study's configurations failed; results in x\n"


def _rows(statuses: list[str]) -> list[dict]:
    return [
        {
            "config_id": i // 2,
            "replicate": i % 2,
            "status": s,
            R.ERROR_KEY: "training diverged: the loss is nan" if s == FAILED else None,
        }
        for i, s in enumerate(statuses)
    ]


def test_all_failed_is_every_configuration_failed_not_one(tmp_path):
    raw = tiny_study(tmp_path, **{"search.replicates": 2})
    stage = search_stage(study_from_dict(raw), tmp_path / "runs" / "tiny")
    with pytest.raises(StudyFailed) as exc:
        check_not_all_failed(stage, _rows([FAILED, COMPLETED, FAILED, FAILED]))
    message = str(exc.value)
    assert "all 2 of the study's configurations failed" in message
    assert "the first error: training diverged" in message and RESULTS_FILE in message
    assert exc.value.exit_status == 1
    for survivors in (
        [FAILED, FAILED, COMPLETED, COMPLETED],
        [FAILED, FAILED, STOPPED, STOPPED],
        [],
    ):
        check_not_all_failed(stage, _rows(survivors))  # one configuration lived: no error


# ---------------------------------------------------------------------------------------
# The study folder's marker.


def _study(tmp_path):
    return study_from_dict(tiny_study(tmp_path))


def test_a_new_study_folder_is_marked_as_a_study(tmp_path):
    study = _study(tmp_path)
    folder, resume = prepare_folder(study, fresh=False)
    release_folder(folder)
    assert not resume and marker.kind_of(folder) == marker.STUDY


def test_an_older_unmarked_study_folder_is_resumed_marked_and_emptied_by_fresh(tmp_path):
    study = _study(tmp_path)
    layout = StudyLayout.of(tmp_path / "runs", "tiny")
    layout.folder.mkdir(parents=True)
    write_yaml(layout.study_file, study.to_dict())
    layout.optuna_db.write_bytes(b"")
    (layout.folder / "old_cache.json").write_text("{}")  # a name an older version wrote
    folder, resume = prepare_folder(study, fresh=False)
    release_folder(folder)
    assert resume and marker.kind_of(folder) == marker.STUDY
    assert (folder / "old_cache.json").is_file()  # resumed: nothing deleted
    folder, resume = prepare_folder(study, fresh=True)
    release_folder(folder)
    assert not resume and marker.kind_of(folder) == marker.STUDY
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [marker.MARKER_FILE, "driver.lock", "study.yaml"]
    )


@pytest.mark.parametrize("fresh", [False, True])
def test_a_users_folder_named_like_the_study_is_refused_naming_the_file(tmp_path, fresh):
    study = _study(tmp_path)
    folder = _user_folder(tmp_path / "runs" / "tiny")
    (folder / "study.yaml").write_text("name: theirs\n")  # study.yaml alone is not a study
    before = _tree(tmp_path)
    with pytest.raises(ConfigError) as exc:
        prepare_folder(study, fresh=fresh)
    assert "no vae_study.json" in str(exc.value) and "index.html is in the way" in str(exc.value)
    assert _tree(tmp_path) == before


def test_a_folder_marked_by_another_tool_or_kind_is_refused(tmp_path):
    study = _study(tmp_path)
    folder = tmp_path / "runs" / "tiny"
    marker.write(folder, marker.REPORT)
    with pytest.raises(ConfigError, match="a vae_study report folder's marker"):
        prepare_folder(study, fresh=True)
    (folder / marker.MARKER_FILE).write_text('{"tool": "other"}')
    with pytest.raises(ConfigError, match="another tool's marker"):
        prepare_folder(study, fresh=True)
    assert (folder / marker.MARKER_FILE).read_text() == '{"tool": "other"}'


def test_a_folder_holding_only_its_lock_is_a_study_cut_short(tmp_path):
    study = _study(tmp_path)
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    (folder / "driver.lock").write_text("pid 1 host\n")  # locked, then killed before marking
    folder, resume = prepare_folder(study, fresh=False)
    release_folder(folder)
    assert not resume and marker.kind_of(folder) == marker.STUDY


# ---------------------------------------------------------------------------------------
# Files read from a folder the user names: regular files, bounded, never blocking.


def test_a_record_file_that_is_a_fifo_or_too_big_is_refused_at_once(tmp_path):
    fifo = _fifo(tmp_path / "replicate_0.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_bounded(fifo, 100)
    with pytest.raises(CheckpointError, match="not a regular file"):
        record.read_info(fifo)
    big = _sparse(tmp_path / "big.json", MAX_RECORD_JSON_BYTES + 1)
    with pytest.raises(CheckpointError, match="more than"):
        record.read_info(big)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "nope.json", 100)
    real = tmp_path / "real.json"
    real.write_text('{"a": 1}')
    (tmp_path / "link.json").symlink_to(real)  # a link to a regular file: read
    assert record.read_info(tmp_path / "link.json") == {"a": 1}
    with pytest.raises(CheckpointError, match="not a regular file"):
        R.read_results(_fifo(tmp_path / RESULTS_FILE))


def test_a_checkpoint_that_is_a_fifo_is_refused_not_read(tmp_path):
    from vae_study.core import checkpoint as ckpt

    _fifo(tmp_path / "checkpoint" / "state.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        ckpt.load(tmp_path / "checkpoint")


def test_the_real_process_ends_in_one_line_for_a_fifo_study_file(tmp_path):
    """Through the interpreter, as a user runs it: exit status 2, one line, no hang."""
    import subprocess

    fifo = _fifo(tmp_path / "study.yaml")
    for verb in ("fit", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "vae_study", verb, str(fifo)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "not a regular file" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
