"""Bad input in a study or run file: one short line on stderr naming the key, the value and
the rule, exit status 2, no traceback, no folder created and no Ray started. Files are
written as text, so problems at the YAML level are real ones. No Ray, no data: fast."""

from __future__ import annotations

import sys
import time
import types

import pytest

from study_factory import tiny_study, write_study
from vae_study.cli import build_parser, main
from vae_study.commands import check_writable, cmd_run
from vae_study.config.messages import show as _show
from vae_study.config.run import RunConfig, TrainConfig, replace_keys
from vae_study.config.schema import build_section, coerce
from vae_study.config.study import RayConfig, check_name, load_study
from vae_study.config.yaml_file import MAX_DEPTH, MAX_VALUES, apply_overrides, read_yaml
from vae_study.errors import ConfigError

# The sections of a good study file, one line each; a case replaces some of them.
BASE = {
    "name": "name: tiny",
    "data": "data: {val_size: 100}",
    "model": "model: {hidden: [32], latent_dim: 2}",
    "train": "train: {epochs: 2, batch_size: 100, device: cpu}",
    "eval": "eval: {k: 10, surgery_examples: 100}",
    "search": "search: {num_trials: 4, max_concurrent: 2, space: {train.beta: {log_uniform: "
    "[0.1, 10.0]}, model.latent_dim: {choice: [2, 4]}}}",
    "ray": "ray: {dashboard: false}",
    "report": "report: {enabled: false}",
}

SPACE = "space: {train.beta: {log_uniform: [0.1, 10.0]}, model.latent_dim: {choice: [2, 4]}}"


def _text(**sections: str) -> str:
    lines = {**BASE, **sections}
    return "".join(line + "\n" for line in lines.values() if line)


def _bomb(levels: int = 9) -> str:
    """The billion laughs: each level lists the previous one nine times (9**9 values)."""
    out = 'x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        out += f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]\n"
    return out


BIG = "x" * 2_000_000

CASES = [
    # 1-3: what the YAML reader itself must refuse
    ("alias bomb", _text() + _bomb(), "expand to more than"),
    (
        "deep nesting",
        _text(eval="eval: {k: " + "[" * 5000 + "]" * 5000 + "}"),
        f"nests deeper than {MAX_DEPTH} levels",
    ),
    ("recursive alias", _text(model="model: &m {hidden: [*m]}"), "refers to the value"),
    ("not UTF-8", b"name: tiny\ntrain: {device: cpu\xff}\n", "not UTF-8 text: byte 0xff at line 2"),
    ("huge integer", _text(train="train: {seed: " + "7" * 5000 + "}"), "5000 digits"),
    (
        "python tag",
        _text(name="name: !!python/object/apply:os.system ['echo hi']"),
        "could not determine a constructor",
    ),
    # 12: duplicates
    (
        "duplicate section",
        _text() + "train: {epochs: 3}\n",
        "the key 'train' is given twice (first at line 4)",
    ),
    (
        "duplicate key",
        _text(train="train:\n  beta: 1.0\n  epochs: 2\n  beta: 2.0"),
        "at line 7, column 3: the key 'beta' is given twice (first at line 5)",
    ),
    # 4: huge values are abbreviated (the whole line is checked for its length below)
    ("huge value", _text(train=f"train: {{device: cuda{BIG}}}"), "train.device: got 'cudaxxx"),
    ("huge key", _text(train=f"train:\n  ? {BIG}\n  : 1"), "unknown key train.'xxxx"),
    ("huge name", _text(name=f"name: {BIG}"), "name: got 'xxx"),
    (
        "huge choice",
        _text(search=f"search: {{space: {{train.beta: {{choice: [{BIG}]}}}}}}"),
        "train.beta: got 'xxx",
    ),
    # 5: non-finite numbers
    ("inf lr", _text(train="train: {lr: .inf}"), "train.lr: got inf, expected a finite number"),
    ("nan beta", _text(train="train: {beta: .nan}"), "train.beta: got nan"),
    ("inf gaussian std", _text(model="model: {gaussian_std: .inf}"), "model.gaussian_std"),
    (
        "inf cpus",
        "resources: {cpus_per_trial: .inf}\n" + _text(),
        "resources.cpus_per_trial: got inf, expected a finite number",
    ),
    (
        "nan gpus",
        "resources: {gpus_per_trial: .nan}\n" + _text(),
        "resources.gpus_per_trial: got nan",
    ),
    (
        "inf bound",
        _text(search="search: {space: {train.beta: {uniform: [0.1, .inf]}}}"),
        "search.space.train.beta.uniform: expected finite bounds",
    ),
    (
        "nan choice",
        _text(search="search: {space: {train.beta: {choice: [0.5, .nan]}}}"),
        "train.beta: got nan",
    ),
    (
        "inf sampler option",
        _text(search="search: {sampler_options: {prior_weight: .inf}, " + SPACE + "}"),
        "search.sampler_options.prior_weight: got inf",
    ),
    # 6: integers out of range
    (
        "seed too large",
        _text(train="train: {seed: 4294967296}"),
        "train.seed: got 4294967296, expected an integer in [0, 2**32 - 1]",
    ),
    ("negative seed", _text(train="train: {seed: -1}"), "train.seed: got -1"),
    (
        "search seed",
        _text(search="search: {seed: 1099511627776, " + SPACE + "}"),
        "search.seed: got 1099511627776",
    ),
    (
        "dashboard port",
        _text(ray="ray: {dashboard_port: 70000}"),
        "ray.dashboard_port: got 70000, a dashboard port outside 0-65535",
    ),
    (
        "epochs",
        _text(train="train: {epochs: 10000000}"),
        "train.epochs: got 10000000, expected at most 1000000",
    ),
    (
        "num_trials",
        _text(search="search: {num_trials: 10000001, " + SPACE + "}"),
        "search.num_trials: got 10000001, expected at most",
    ),
    (
        "64 bits",
        _text(train="train: {batch_size: 18446744073709551616}"),
        "train.batch_size: got 18446744073709551616, expected an integer that fits in 64 bits",
    ),
    ("float too large", _text(train="train: {batch_size: 1.0e+300}"), "fits in 64 bits"),
    (
        "int bound too large",
        _text(search="search: {space: {train.k: {int: [1, " + "9" * 400 + "]}}}"),
        "search.space.train.k.int: expected finite bounds",
    ),
    # 7: study names
    ("long name", _text(name="name: " + "a" * 101), "use at most 100"),
    ("trailing newline", _text(name='name: "smoke\\n"'), "line breaks"),
    # 8: devices
    (
        "cuda:x",
        _text(train="train: {device: 'cuda:x'}"),
        "train.device: got 'cuda:x', expected one of auto, cpu, cuda, cuda:N",
    ),
    ("cuda1", _text(train="train: {device: cuda1}"), "train.device: got 'cuda1'"),
    ("gpu", _text(train="train: {device: gpu}"), "train.device: got 'gpu'"),
    ("cuda:-1", _text(train="train: {device: 'cuda:-1'}"), "train.device: got 'cuda:-1'"),
    # 9: what Ray or Optuna would refuse only once the study runs
    (
        "sampler option",
        _text(search="search: {sampler_options: {n_startup: 3}, " + SPACE + "}"),
        "search.sampler_options: TPESampler.__init__() got an unexpected keyword argument",
    ),
    (
        "point not a choice",
        _text(search="search: {points_to_evaluate: [{model.latent_dim: 3}], " + SPACE + "}"),
        "model.latent_dim=3 is not one of its choices [2, 4]",
    ),
    (
        "point out of range",
        _text(search="search: {points_to_evaluate: [{train.beta: 50.0}], " + SPACE + "}"),
        "train.beta=50.0 is not a number in its range [0.1, 10.0]",
    ),
    (
        "point not an integer",
        _text(
            search="search: {points_to_evaluate: [{train.k: 2.5}], space: {train.k: {int: [1, 5]}}}"
        ),
        "train.k=2.5 is not an integer in its range",
    ),
    (
        "ray address",
        _text(ray="ray: {address: 'head node'}"),
        "ray.address: got 'head node', expected auto, host:port",
    ),
    ("dashboard host", _text(ray="ray: {dashboard_host: 'http://x/'}"), "ray.dashboard_host"),
    (
        "grace period",
        "scheduler: {type: asha, grace_period: 5}\n" + _text(),
        "scheduler.grace_period: got 5, longer than train.epochs=2",
    ),
    ("report dir", "FILE", "report.dir"),
]


@pytest.mark.parametrize("label, text, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_study_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys, label, text, fragment):
    monkeypatch.chdir(tmp_path)  # the default output.dir (runs/) would appear here
    path = tmp_path / "study.yaml"
    if text == "FILE":  # report.dir under a regular file: cannot be created, even by root
        (tmp_path / "plain").write_text("a file")
        text = _text(report="report: {dir: plain/reports, enabled: true}")
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    started = time.perf_counter()
    code = main(["run", str(path)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert len(err) < 600  # a value is abbreviated, never echoed whole
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "reports").exists() and not (tmp_path / "plain").is_dir()
    assert elapsed < 5  # the alias bomb and deep nesting are refused at once


# The cases above that concern a study's own sections (name, search, scheduler, resources,
# ray): fit trains the base configuration and does not read them.
STUDY_ONLY = {
    "huge name", "huge choice", "inf cpus", "nan gpus", "inf bound", "nan choice",
    "inf sampler option", "search seed", "dashboard port", "num_trials",
    "int bound too large", "long name", "trailing newline", "sampler option",
    "point not a choice", "point out of range", "point not an integer", "ray address",
    "dashboard host", "grace period",
}  # fmt: skip


@pytest.mark.parametrize(
    "label, text, fragment",
    [c for c in CASES if c[0] not in STUDY_ONLY and c[1] != "FILE"],
    ids=[c[0] for c in CASES if c[0] not in STUDY_ONLY and c[1] != "FILE"],
)
def test_the_same_bad_file_for_fit_is_one_line_exit_2(tmp_path, capsys, label, text, fragment):
    path = tmp_path / "study.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    out = tmp_path / "out"
    assert main(["fit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_the_study_only_cases_exist():
    assert STUDY_ONLY <= {c[0] for c in CASES}


def test_the_base_file_is_good(tmp_path):
    """The cases above fail for their own reason: the file they change is a good one."""
    path = tmp_path / "study.yaml"
    path.write_text(_text())
    study = load_study(path)
    assert study.name == "tiny" and study.base.train.epochs == 2


@pytest.mark.parametrize(
    "label, text, fragment",
    [
        ("alias bomb", _bomb(), "expand to more than"),
        ("duplicate key", "train: {epochs: 1, epochs: 2}\n", "the key 'epochs' is given twice"),
        ("not UTF-8", b"train: {device: \xc3\x28}\n", "not UTF-8 text"),
        ("bad device", "train: {device: gpu}\n", "train.device: got 'gpu'"),
        ("inf", "train: {lr: .inf}\n", "train.lr: got inf"),
    ],
    ids=["alias bomb", "duplicate key", "not UTF-8", "bad device", "inf"],
)
def test_bad_run_file_for_fit(tmp_path, capsys, label, text, fragment):
    path = tmp_path / "run.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    out = tmp_path / "out"
    assert main(["fit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_refusals_start_no_ray(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    for text in (
        _text() + "train: {}\n",
        _text(train="train: {seed: 4294967296}"),
        _text(search="search: {sampler_options: {nope: 1}, " + SPACE + "}"),
    ):
        (tmp_path / "study.yaml").write_text(text)
        assert main(["run", str(tmp_path / "study.yaml")]) == 2
        assert not ray.is_initialized()
    assert capsys.readouterr().err.count("\n") == 3


def test_bad_set_values_are_refused_like_file_values(tmp_path, capsys):
    path = write_study(tmp_path, tiny_study(tmp_path))
    deep = "[" * 1000 + "]" * 1000
    for item, fragment in (
        (f"train.lr={deep}", "nests deeper than"),
        ("train.lr=.inf", "train.lr: got inf"),
        ("train.seed=-5", "train.seed: got -5"),
        ("name=a/b", "name: got 'a/b'"),
        (f"train.device={BIG}", "train.device: got 'xxx"),
    ):
        assert main(["run", str(path), "--set", item]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1 and len(err) < 600, err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------
# The helpers.


def test_set_name_and_output_dir(tmp_path):
    """What the README and the resume error tell users to type."""
    path = write_study(tmp_path, tiny_study(tmp_path))
    study = load_study(path, ["name=beta_sweep2", f"output.dir={tmp_path / 'elsewhere'}"])
    assert study.name == "beta_sweep2"
    assert study.folder == tmp_path / "elsewhere" / "beta_sweep2"
    assert apply_overrides({"name": "a"}, ["name=b"]) == {"name": "b"}


def test_scientific_notation_in_bounds_choices_and_points(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        _text(
            search="search: {points_to_evaluate: [{train.lr: 1e-3}], space: "
            "{train.lr: {log_uniform: [1e-4, 1e-2]}, train.beta: "
            "{choice: [5e-1, 1E0, 2e+0]}}}"
        )
    )
    study = load_study(path)
    lr, beta = study.search.space
    assert (lr.low, lr.high) == (1e-4, 1e-2)
    assert beta.values == (0.5, 1.0, 2.0)
    # the same bounds given as text from Python (coerce reads single keys so too)
    raw = tiny_study(tmp_path, **{"search.space": {"train.lr": {"uniform": ["1e-4", "1e-2"]}}})
    assert load_study(write_study(tmp_path, raw)).search.space[0].high == 1e-2


def test_yaml_reader_keeps_what_is_legitimate(tmp_path):
    path = tmp_path / "a.yaml"
    # merge keys may override (that is not a duplicate); a word that only looks like a
    # number stays a string; 1e5 is a float; an anchor used a few times is fine
    path.write_text(
        "base: &b {epochs: 1, beta: 2.0}\ntrain: {<<: *b, epochs: 3}\n"
        "x: 1e\ny: 1e5\nz: [*b, *b, *b]\n"
    )
    raw = read_yaml(path)
    assert raw["train"] == {"epochs": 3, "beta": 2.0}
    assert raw["x"] == "1e" and raw["y"] == 100000.0
    assert raw["z"] == [{"epochs": 1, "beta": 2.0}] * 3


def test_alias_budget_is_what_is_expanded(tmp_path):
    """A document of few lines whose aliases expand past MAX_VALUES is refused; one whose
    expansion is just under it is read."""
    path = tmp_path / "a.yaml"
    row = "[" + ", ".join(["1"] * 99) + "]"  # 100 values with the list itself
    ok = MAX_VALUES // 100 - 2
    path.write_text(f"r: &r {row}\nt: [" + ", ".join(["*r"] * ok) + "]\n")
    assert len(read_yaml(path)["t"]) == ok
    path.write_text(f"r: &r {row}\nt: [" + ", ".join(["*r"] * (ok + 10)) + "]\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_VALUES} values"):
        read_yaml(path)


def test_show_abbreviates():
    assert _show("short") == "'short'"
    long = _show("y" * 10_000_000)
    assert len(long) < 120 and long.startswith("'yyy") and "10000002 characters" in long
    assert _show(10**5000) == "an integer of 16610 bits"
    assert len(_show(list(range(100_000)))) < 120


def test_coerce_limits():
    assert coerce(2**63 - 1, int, "train.batch_size") == 2**63 - 1
    with pytest.raises(ConfigError, match="fits in 64 bits"):
        coerce(2**63, int, "train.batch_size")
    assert coerce(10**6, int, "train.epochs") == 10**6
    with pytest.raises(ConfigError, match="at most 1000000"):
        coerce(10**6 + 1, int, "train.epochs")
    assert coerce("1e-3", float, "train.lr") == 1e-3
    for bad in (float("inf"), float("-inf"), float("nan"), "inf", 10**400):
        with pytest.raises(ConfigError, match="expected a finite number"):
            coerce(bad, float, "train.lr")


def test_seed_and_device_rules():
    assert build_section(TrainConfig, {"seed": 2**32 - 1, "device": "cuda:12"}, "train").seed
    for device in ("auto", "cpu", "cuda", "cuda:0"):
        assert build_section(TrainConfig, {"device": device}, "train").device == device
    for device in ("cuda:", "cuda:0\n", "CUDA", "cuda:1.5", "mps"):
        with pytest.raises(ConfigError, match="train.device"):
            build_section(TrainConfig, {"device": device}, "train")
    with pytest.raises(ConfigError, match="train.seed"):
        replace_keys(RunConfig(), {"train.seed": 2**32})


def test_ray_addresses_that_are_kept():
    for address in ("auto", "10.0.0.5:6379", "head-1.cluster:6379", "[::1]:6379", None):
        assert build_section(RayConfig, {"address": address}, "ray").address == address
    for address in ("10.0.0.5", "h:0", "h:65536", "h:6379\n"):
        with pytest.raises(ConfigError, match="ray.address"):
            build_section(RayConfig, {"address": address}, "ray")


def test_dashboard_port_range():
    assert build_section(RayConfig, {"dashboard_port": 0}, "ray").dashboard_port == 0
    assert build_section(RayConfig, {"dashboard_port": 65535}, "ray").dashboard_port == 65535
    with pytest.raises(ConfigError, match="outside 0-65535"):
        build_section(RayConfig, {"dashboard_port": -1}, "ray")


def test_check_name():
    assert check_name("a" * 100) == "a" * 100
    for bad in ("a" * 101, "smoke\n", "a/b", "..", "-x", "a b"):
        with pytest.raises(ConfigError, match="name: got"):
            check_name(bad)


def test_check_writable_creates_nothing(tmp_path):
    deep = tmp_path / "not" / "yet" / "there"
    check_writable(deep, "report.dir")  # its first existing ancestor is writable
    assert not (tmp_path / "not").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"report.dir: .* is not a folder"):
        check_writable(tmp_path / "f" / "reports", "report.dir")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_writable(tmp_path / "f", "report.dir")


def test_no_report_skips_the_report_dir_check(tmp_path, monkeypatch):
    """--no-report (or report.enabled: false) does not need a writable report.dir: the
    check must not refuse such a study (stopped here before Ray by a later, known error)."""
    (tmp_path / "f").write_text("x")
    raw = tiny_study(tmp_path, **{"report.dir": str(tmp_path / "f" / "r"), "report.enabled": True})
    path = write_study(tmp_path, raw)

    def stop(*args, **kwargs):
        raise ConfigError("reached run_study")

    # a stand-in for vae_study.study.driver, so that Ray is not even imported
    monkeypatch.setitem(
        sys.modules, "vae_study.study.driver", types.SimpleNamespace(run_study=stop)
    )
    with pytest.raises(ConfigError, match="reached run_study"):
        cmd_run(build_parser().parse_args(["run", str(path), "--no-report"]))
    with pytest.raises(ConfigError, match="report.dir"):  # without --no-report: refused
        cmd_run(build_parser().parse_args(["run", str(path)]))
    assert (tmp_path / "f").is_file()


def test_what_we_write_reads_back_the_same(tmp_path):
    """study.yaml is read again on resume: a string that the reader would take for a
    number in scientific notation (a study named 1e5) must come back a string."""
    from vae_study.config.yaml_file import write_yaml

    raw = {"name": "1e5", "data": {"root": "2E-3"}, "lr": 1e-4, "beta": float("inf")}
    write_yaml(tmp_path / "s.yaml", raw)
    assert read_yaml(tmp_path / "s.yaml") == raw
