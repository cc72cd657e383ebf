"""A researcher's own VAE: models sized from the image shape, user models by import path
(``model.arch: package.module:ClassName``, ``model.options``), their protocol checks, resume,
search, packs, and the import check on every Ray node."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

from study_factory import small_run_config, tiny_study
from vae_study import metrics as M
from vae_study.config.run import ModelConfig, RunConfig, replace_keys, run_config_from_dict
from vae_study.config.space import model_variants
from vae_study.config.study import study_from_dict
from vae_study.core import checkpoint as ckpt
from vae_study.core.architectures import ConvDecoder, ConvEncoder
from vae_study.core.fused import check_packable, fit_pack, fusion_mode
from vae_study.core.model import VAE, check_models
from vae_study.core.objectives import compute_terms
from vae_study.core.splits import Datasets, Split
from vae_study.core.train import fit, make_model
from vae_study.errors import CheckpointError, ConfigError, StudyError

TESTS = Path(__file__).resolve().parent
USER = "user_models:TinyVAE"
STATIC = (M.EPOCH_SECONDS, M.TOTAL_SECONDS)  # wall-clock times differ, everything else not
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 27, 29)]


def tiny_data(shape: tuple[int, int, int], n: tuple[int, int, int] = (64, 16, 16)) -> Datasets:
    """Random grey levels of ``shape``, flat (N, C*H*W), as a loader presents them."""
    g = torch.Generator().manual_seed(0)
    values = math.prod(shape)
    train, val, test = (Split(torch.rand(k, values, generator=g), None) for k in n)
    return Datasets(train, val, test, shape=shape)


def run_config(**keys) -> RunConfig:
    base = {
        "model.latent_dim": 4,
        "model.hidden": [16],
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.device": "cpu",
        "eval.k": 4,
        "eval.val_k": 4,
        "eval.val_examples": 8,
        "eval.nll_examples": 8,
        "eval.surgery_examples": 8,
    }
    return replace_keys(RunConfig(), {**base, **keys})


def strip(history):
    return [{k: v for k, v in h.items() if k not in STATIC} for h in history]


# ---------------------------------------------------------------------------------------
# 1. Built-in models sized from (C, H, W).


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
def test_builtin_models_fit_any_image_shape_and_train(arch, shape):
    cfg = ModelConfig(arch=arch, latent_dim=3, hidden=(16,), likelihood="gaussian", learn_std=True)
    torch.manual_seed(0)
    model = VAE(cfg, shape)
    values = math.prod(shape)
    x = torch.rand(5, values)
    out, mu, logvar, z = model(x, 2)
    assert out.shape == (2, 5, values) and mu.shape == logvar.shape == (5, 3)
    assert model.log_std.shape == (values,)  # one learned std per value, C*H*W of them
    if arch == "conv":  # the decoder gives back exactly (C, H, W), odd sides included
        h = model.decoder.fc(z.reshape(-1, 3)).view(-1, *model.decoder.start)
        assert model.decoder.deconv(h).shape == (10, *shape)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = compute_terms(model, x).loss.mean()
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_conv_halves_while_the_image_allows_and_mnist_keeps_its_architecture():
    cfg = ModelConfig(arch="conv", hidden=(16,))
    convs = [
        [m for m in ConvEncoder(cfg, s).conv if isinstance(m, torch.nn.Conv2d)] for s in SHAPES
    ]
    assert [len(c) for c in convs] == [2, 3, 2]  # 28->14->7; 32->16->8->4; 27x29->13x14->6x7
    assert [(c.in_channels, c.out_channels) for c in convs[0]] == [(1, 32), (32, 64)]
    assert convs[1][0].in_channels == 3
    assert ConvDecoder(cfg, (1, 28, 28)).start == (64, 7, 7)
    deconv = ConvDecoder(cfg, (1, 27, 29)).deconv  # 6x7 -> 13x14 -> 27x29: odd sides padded
    pads = [m.output_padding for m in deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert pads == [(1, 0), (1, 1)]


def test_fit_on_colour_images_saves_the_shape_and_a_report_rebuilds_the_model(tmp_path):
    shape = (3, 8, 8)
    data = tiny_data(shape)
    config = run_config(**{"model.arch": "conv"})
    result = fit(config, out_dir=tmp_path / "run", data=data)
    state = ckpt.load(tmp_path / "run" / "checkpoint")
    assert state.shape == shape
    model = VAE(run_config_from_dict(state.config).model, state.shape)  # as report does
    model.load_state_dict(state.model)
    x = data.test.x[:4]
    torch.testing.assert_close(model.encode(x), result.model.encode(x))
    # Resuming on data of another shape is refused, naming both shapes.
    with pytest.raises(CheckpointError, match=r"shape \(C, H, W\) = \(3, 8, 8\).*\(1, 8, 8\)"):
        fit(
            replace_keys(config, {"train.epochs": 3}),
            out_dir=tmp_path / "run",
            data=tiny_data((1, 8, 8)),
        )


def test_a_checkpoint_without_a_shape_is_mnist(tmp_path):
    state = ckpt.TrainingState(
        epoch=1,
        model={},
        optimizer={},
        generator=torch.Generator().get_state(),
        config={},
        history=[],
    )
    ckpt.save(tmp_path, state)
    raw = torch.load(tmp_path / ckpt.STATE_FILE, weights_only=True)
    del raw["shape"]  # as written before shapes were saved
    torch.save(raw, tmp_path / ckpt.STATE_FILE)
    assert ckpt.load(tmp_path).shape == (1, 28, 28)


# ---------------------------------------------------------------------------------------
# 2. User models by import path.


def test_a_user_model_trains_with_its_options_and_resumes_with_identical_numbers(tmp_path):
    shape = (3, 6, 5)
    data = tiny_data(shape)
    config = run_config(
        **{
            "model.arch": USER,
            "model.options": {"width": 12},
            "model.likelihood": "gaussian",
            "model.learn_std": True,
            "train.epochs": 3,
        }
    )
    whole = fit(config, out_dir=tmp_path / "whole", data=data)
    net = whole.model.net
    assert type(net).__name__ == "TinyVAE" and net.width == 12 and net.shape == shape
    assert net.body[0].weight.shape == (12, 90)  # options and the shape reached the class
    # The learned std belongs to the wrapper, one per value; the user class has none.
    assert whole.model.log_std.shape == (90,) and whole.model.log_std.requires_grad
    assert not hasattr(net, "log_std")
    assert len(whole.history) == 3 and math.isfinite(whole.final[M.TEST_RATE])

    fit(replace_keys(config, {"train.epochs": 2}), out_dir=tmp_path / "split", data=data)
    resumed = fit(config, out_dir=tmp_path / "split", data=data)  # imported again from config
    assert strip(resumed.history) == strip(whole.history)
    for a, b in zip(
        resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for key, value in whole.final.items():
        if key not in STATIC:
            assert resumed.final[key] == value, key
    saved = ckpt.load(tmp_path / "split" / "checkpoint")
    assert saved.config["model"]["arch"] == USER
    assert saved.config["model"]["options"] == {"width": 12}


def test_a_changed_option_is_refused_on_resume(tmp_path):
    data = tiny_data((1, 4, 4))
    config = run_config(**{"model.arch": USER, "model.options": {"width": 6}})
    fit(config, out_dir=tmp_path / "run", data=data, final_eval=False)
    changed = replace_keys(config, {"model.options.width": 7})
    with pytest.raises(CheckpointError, match=r"model\.options\.width: 6 -> 7"):
        fit(changed, out_dir=tmp_path / "run", data=data, final_eval=False)


@pytest.mark.parametrize(
    ("arch", "options", "fragments"),
    [
        (
            "user_models:NoDecode",
            {},
            ["user_models:NoDecode does not follow", "the class has no decode method"],
        ),
        (
            "user_models:WrongEncodeShape",
            {},
            ["user_models:WrongEncodeShape", "returned mu of shape (2, 1), expected (2, 4)"],
        ),
        (
            "user_models:WrongDecodeShape",
            {},
            ["user_models:WrongDecodeShape", "decode(z (3, 4)) returned a tensor of shape (3, 47)"],
        ),
        ("user_models:NotAModule", {}, ["NotAModule", "not a torch.nn.Module"]),
        (
            USER,
            {"colour": 3},
            ["TinyVAE", "TypeError", "colour", "every key of model.options"],
        ),
        (
            "no_such_module_xyz.models:Net",
            {},
            [
                "module 'no_such_module_xyz.models' cannot be imported",
                "ModuleNotFoundError",
                "sys.path is [",
                "PYTHONPATH",
            ],
        ),
        ("user_models:Missing", {}, ["module 'user_models'", "has no such name 'Missing'"]),
        ("user_models:NOT_A_CLASS", {}, ["has a int, not a class 'NOT_A_CLASS'"]),
    ],
)
def test_a_broken_user_model_fails_before_training_naming_what_is_wrong(
    tmp_path, arch, options, fragments
):
    config = run_config(**{"model.arch": arch, "model.options": options})
    with pytest.raises(ConfigError) as info:
        fit(config, out_dir=tmp_path / "run", data=tiny_data((1, 6, 8)))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "run" / "checkpoint").exists()  # nothing was trained


def test_model_arch_must_be_mlp_conv_or_an_import_path():
    with pytest.raises(ConfigError, match=r"model\.arch: got 'resnet'.*package\.module:ClassName"):
        ModelConfig(arch="resnet")
    with pytest.raises(ConfigError, match=r"^model\.options: .*only a user model"):
        ModelConfig(options={"width": 3})
    with pytest.raises(ConfigError, match=r"model\.options\.width: got \{"):
        ModelConfig(arch=USER, options={"width": {"a": 1}})
    assert ModelConfig(arch="pkg.sub.mod:Net", options={"w": (1, 2)}).options == {"w": [1, 2]}
    assert hash(ModelConfig(arch=USER, options={"a": [1], "b": 2})) == hash(
        ModelConfig(arch=USER, options={"b": 2, "a": (1,)})
    )


# ---------------------------------------------------------------------------------------
# model.options in a study's search space.


def _user_study(tmp_path, space, **over):
    return tiny_study(
        tmp_path,
        **{
            "model": {"arch": USER, "latent_dim": 2, "options": {"width": 4}},
            "search": {"algorithm": "random", "num_trials": 2, "max_concurrent": 1, "space": space},
            **over,
        },
    )


def test_model_options_are_searchable_like_any_key(tmp_path):
    study = study_from_dict(
        _user_study(
            tmp_path,
            {
                "model.options.width": {"choice": [4, 8]},
                "model.options.depth": {"int": [1, 3]},
                "train.beta": {"log_uniform": [0.5, 2.0]},
            },
        )
    )
    trial = study.trial_config({"model.options.width": 8, "model.options.depth": 2})
    assert trial.model.options == {"width": 8, "depth": 2}
    assert study.base.model.options == {"width": 4}
    model = make_model(trial, torch.device("cpu"), (1, 28, 28))
    assert model.net.width == 8 and model.net.depth == 2 and len(model.net.body) == 4
    # The driver builds every searched model once (choices, range ends) before any trial.
    widths_depths = [
        (c.model.options["width"], c.model.options.get("depth", 1))
        for c in model_variants(study.base, study.search.space)
    ]
    assert widths_depths == [(4, 1), (4, 1), (8, 1), (4, 1), (4, 3)]


def test_a_searched_option_the_class_refuses_fails_before_the_study_runs(tmp_path):
    study = study_from_dict(_user_study(tmp_path, {"model.options.colour": {"choice": [1, 2]}}))
    with pytest.raises(ConfigError, match=r"TinyVAE.*TypeError.*colour"):
        check_models([c.model for c in model_variants(study.base, study.search.space)], (1, 28, 28))


def test_a_study_with_a_broken_model_stops_before_ray_and_its_folder(tmp_path):
    import ray

    from vae_study import run_study

    raw = _user_study(tmp_path, {"model.options.width": {"choice": [4, 8]}})
    raw["model"]["arch"] = "user_models:WrongDecodeShape"
    study = study_from_dict(raw)  # importing is not the study file's business
    with pytest.raises(ConfigError, match=r"WrongDecodeShape.*decode\(z \(3, 2\)\) returned"):
        run_study(study)
    assert not study.folder.exists() and not ray.is_initialized()


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.options": {"choice": [{"width": 4}]}}, "the whole mapping model.options"),
        ({"model.options.2x": {"choice": [1]}}, "'2x' is not an option name"),
    ],
)
def test_bad_option_keys_in_a_search_space_are_refused(tmp_path, space, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        study_from_dict(_user_study(tmp_path, space))


def test_options_of_a_builtin_arch_cannot_be_searched(tmp_path):
    raw = _user_study(tmp_path, {"model.options.width": {"choice": [4, 8]}})
    raw["model"] = {"arch": "mlp", "hidden": [8]}
    with pytest.raises(ConfigError, match=r"model\.options: .*only a user model"):
        study_from_dict(raw)


# ---------------------------------------------------------------------------------------
# Packs of user models.


def test_a_pack_compares_options_and_trains_user_members_as_their_fits(tmp_path, mnist_root):
    def member(seed, **keys):
        return small_run_config(
            mnist_root,
            **{"model.arch": USER, "model.options": {"width": 6}, "train.seed": seed, **keys},
        )

    with pytest.raises(ConfigError, match=r"^model\.options\.width: member 1 has 7"):
        check_packable([member(0), member(1, **{"model.options": {"width": 7}})])
    with pytest.raises(
        ConfigError, match=r"^model\.options\.depth: member 1 has 2, member 0 has None"
    ):
        check_packable([member(0), member(1, **{"model.options": {"width": 6, "depth": 2}})])
    # A class vmap runs: its members are vmapped, each as its own fit up to float rounding.
    configs = [member(0), member(1, **{"train.beta": 0.5, "train.lr": 3e-3})]
    mode, why = fusion_mode(configs)
    assert mode == "vmap" and USER in why
    packed = fit_pack(configs, out_dirs=[tmp_path / "a", tmp_path / "b"], final_eval=False)
    for config, got in zip(configs, packed, strict=True):
        alone = fit(config, final_eval=False)
        for row_got, row_alone in zip(got.history, alone.history, strict=True):
            for key in row_alone:
                if key not in STATIC:
                    assert row_got[key] == pytest.approx(row_alone[key], rel=1e-5, abs=1e-4), key
        assert (
            ckpt.load(tmp_path / ("a" if config is configs[0] else "b") / "checkpoint").epoch == 2
        )
    # A class vmap cannot run (random numbers inside): the members one after another, each
    # exactly its fit, and the reason said.
    dropout = [
        small_run_config(mnist_root, **{"model.arch": "user_models:DropoutVAE", "train.seed": s})
        for s in (0, 1)
    ]
    mode, why = fusion_mode(dropout)
    assert mode == "sequential" and "torch.func.vmap cannot run it" in why and "random" in why
    packed = fit_pack(dropout, final_eval=False)
    for config, got in zip(dropout, packed, strict=True):
        assert strip(got.history) == strip(fit(config, final_eval=False).history)


# ---------------------------------------------------------------------------------------
# 3. The import check on every Ray node.


@pytest.mark.slow
def test_the_user_model_is_imported_on_every_ray_node(tmp_path, monkeypatch):
    import ray

    from vae_study.study.cluster import start_ray
    from vae_study.study.node_checks import check_arch_on_nodes

    # Ray's workers inherit the environment of the Ray they start from: tests/ on PYTHONPATH
    # (as a user exports it, or `ray job submit --working-dir`) makes user_models importable.
    path = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    assert not ray.is_initialized()
    start_ray(study_from_dict(tiny_study(tmp_path)))
    try:
        check_arch_on_nodes(USER)  # imports there: no error
        with pytest.raises(StudyError) as info:
            check_arch_on_nodes("no_such_module_xyz:Net")
        message = str(info.value)
        node = ray.nodes()[0]["NodeManagerAddress"]
        assert f"cannot be imported on the Ray node at {node}" in message
        assert "no_such_module_xyz" in message and "ModuleNotFoundError" in message
        assert "ray job submit --working-dir" in message
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------
# 4. The example: examples/shapes (its own data, its own VAE).

REPO = TESTS.parent
EXAMPLE = REPO / "examples" / "shapes" / "study.yaml"


def test_the_example_model_follows_the_protocol_on_its_data(tmp_path):
    from examples.shapes.make_data import make_shapes
    from vae_study.config.study import load_study
    from vae_study.core.data import load_datasets

    path = make_shapes(tmp_path / "shapes.npz", n_train=60, n_test=20, size=16)
    study = load_study(EXAMPLE, [f"data.path={path}", "data.val_size=20"])
    data = load_datasets(study.base.data, dequantize=study.base.dequantized)
    assert data.shape == (3, 16, 16) and data.train.x.shape == (40, 768)
    for config in model_variants(study.base, study.search.space):  # width 8 and 16
        model = make_model(config, torch.device("cpu"), data.shape)
        assert model.net.encoder[0].out_channels == config.model.options["width"]
        terms = compute_terms(model, data.train.x[:8])
        assert terms.loss.shape == (8,) and bool(torch.isfinite(terms.loss).all())
    with pytest.raises(ConfigError, match=r"raised ValueError: ShapesVAE needs H and W"):
        make_model(study.base, torch.device("cpu"), (3, 18, 18))


@pytest.mark.slow
def test_the_example_study_runs_under_ray_and_reports(tmp_path, monkeypatch):
    """The example end to end: its .npz drawn, the study run under a local Ray (the trials
    import examples.shapes in Ray's workers), the report rebuilt from the checkpoints."""
    from examples.shapes.make_data import make_shapes
    from vae_study import build_report, run_study
    from vae_study.config.study import load_study
    from vae_study.records.results import read_results

    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    path = make_shapes(tmp_path / "shapes.npz", n_train=300, n_test=60, size=16)
    study = load_study(
        EXAMPLE,
        [
            f"data.path={path}",
            "data.val_size=60",
            f"output.dir={tmp_path / 'runs'}",
            "search.num_trials=2",
            "train.epochs=1",
            "eval.k=5",
            "eval.val_k=5",
            "eval.nll_examples=20",
            "eval.val_examples=20",
            "eval.surgery_examples=20",
        ],
    )
    folder = run_study(study, verbose=0)
    table = read_results(folder / "results.csv")
    assert list(table["status"]) == ["completed", "completed"]
    assert set(table["model.options.width"]) <= {8, 16}
    assert all(v > 0 for v in table[M.TEST_BPD])
    from vae_study.report import model_figures

    drawn = []  # every image grid the report draws: colour (N, H, W, 3) at the data's size
    real = model_figures._show_grid
    monkeypatch.setattr(
        model_figures,
        "_show_grid",
        lambda ax, images, rows, cols: (drawn.append(images.shape), real(ax, images, rows, cols)),
    )
    out = build_report(folder, tmp_path / "report")
    assert list(out.glob("model_*.png"))  # the user model rebuilt from its checkpoint
    assert drawn and all(len(s) == 4 and s[1:] == (16, 16, 3) for s in drawn)
    for figure in ("rate_distortion.png", "knobs.png", "rate_split.png", "learning_curves.png"):
        assert (out / figure).is_file(), figure


@pytest.mark.slow
def test_the_node_that_cannot_import_the_user_model_is_named(tmp_path, monkeypatch):
    """A two-node cluster whose head node lacks tests/ on its PYTHONPATH: the check names
    that node, and only it."""
    import ray
    from ray.cluster_utils import Cluster

    from vae_study.study.node_checks import check_arch_on_nodes

    base = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *base]))
    monkeypatch.chdir(tmp_path)  # workers start in the driver's folder, with it on sys.path
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), *base]))
        cluster.add_node(num_cpus=1)  # its raylet, and so its workers, see tests/
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2
        head = cluster.head_node.node_id
        with pytest.raises(StudyError) as info:
            check_arch_on_nodes(USER)
        message = str(info.value)
        assert f"(node {head[:8]})" in message and "more nodes" not in message
        other = next(n["NodeID"] for n in nodes if n["NodeID"] != head)
        assert other[:8] not in message
        assert "No module named 'user_models'" in message
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_conv_refuses_images_too_small_for_one_convolution():
    """Below 8x8 the conv architecture would have no convolution and end in an activation
    (ReLU logits >= 0): refused, naming the size and the fix."""
    from vae_study.config.run import ModelConfig
    from vae_study.core.model import VAE, check_models
    from vae_study.errors import ConfigError

    cfg = ModelConfig(arch="conv", hidden=(16,), latent_dim=2)
    with pytest.raises(ConfigError, match=r"model.arch: conv on images of 7x7.*>= 8.*mlp"):
        VAE(cfg, (1, 7, 7))
    with pytest.raises(ConfigError, match="conv on images of 7x9"):
        check_models([cfg], (3, 7, 9))
    assert VAE(cfg, (1, 8, 8)).decode(torch.zeros(1, 2)).shape == (1, 64)


@pytest.mark.parametrize(
    ("body", "raised"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    ],
)
def test_a_user_module_that_exits_when_imported_is_a_config_error(
    tmp_path, mnist_root, monkeypatch, capsys, body, raised
):
    # Issue 19: a module calling sys.exit(0) at import made the command exit 0, silently.
    name = f"exits_{raised.lower()}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    from vae_study.cli import main
    from vae_study.core.user_model import import_arch

    with pytest.raises(ConfigError, match=rf"model\.arch: .*{name}.*{raised}.*fix the module"):
        import_arch(f"{name}:Net")
    study = tmp_path / "s.yaml"
    study.write_text(
        f"data: {{root: {mnist_root}, val_size: 50}}\nmodel: {{arch: '{name}:Net'}}\n"
        "train: {epochs: 1, device: cpu}\n"
    )

    assert main(["fit", str(study), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert raised in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
