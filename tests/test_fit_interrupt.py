"""A run stopped and continued: resuming on another device, Ctrl-C (in a terminal or a
notebook) leaving a checkpoint that resumes, and fit never overwriting a folder it did not
make."""

from __future__ import annotations

import pytest
import torch

from vae_study import checkpoint as ckpt
from vae_study import metrics as M
from vae_study.config import RunConfig, replace_keys
from vae_study.train import fit


def _config(root, **keys) -> RunConfig:
    base = {"data.root": str(root), "data.val_size": 50, "model.latent_dim": 4,
            "model.hidden": [32], "train.epochs": 2, "train.batch_size": 32,
            "train.device": "cpu", "eval.k": 8, "eval.surgery_examples": 50}
    base.update(keys)
    return replace_keys(RunConfig(), base)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


# --- the generator state, whatever map_location does ----------------------------------------

def _saved_state(folder) -> tuple[ckpt.TrainingState, torch.Generator]:
    """A checkpoint of a small model after one Adam step, and the generator it saved."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(123)
    torch.rand(5, generator=gen)  # a state that is not the seed's
    state = ckpt.TrainingState(epoch=3, model=model.state_dict(), optimizer=opt.state_dict(),
                               generator=gen.get_state(), config={"a": 1}, history=[])
    ckpt.save(folder, state)
    return state, gen


def test_generator_state_comes_back_on_the_cpu_whatever_map_location(tmp_path):
    saved, gen = _saved_state(tmp_path)
    # The fault: torch.load moves every tensor, the generator state too, and set_state
    # accepts only a CPU ByteTensor.
    moved = torch.load(tmp_path / ckpt.STATE_FILE, map_location="meta", weights_only=True)
    assert moved["generator"].device.type == "meta"
    with pytest.raises((TypeError, RuntimeError)):
        torch.Generator().set_state(moved["generator"])

    state = ckpt.load(tmp_path, map_location="meta")
    assert state.generator.device.type == "cpu" and state.generator.dtype == torch.uint8
    assert torch.equal(state.generator, saved.generator)
    restored = torch.Generator()
    restored.set_state(state.generator)
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=gen))
    # Everything else went where map_location said.
    assert all(t.device.type == "meta" for t in state.model.values())
    opt_tensors = [v for s in state.optimizer["state"].values() for v in s.values()
                   if isinstance(v, torch.Tensor)]
    assert len(opt_tensors) == 6 and all(t.device.type == "meta" for t in opt_tensors)
    assert state.epoch == 3 and state.config == {"a": 1}


def test_load_on_the_cpu_gives_the_saved_tensors(tmp_path):
    saved, _ = _saved_state(tmp_path)
    state = ckpt.load(tmp_path)
    assert all(torch.equal(state.model[k], v) for k, v in saved.model.items())
    assert state.optimizer["param_groups"] == saved.optimizer["param_groups"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_resumes_on_cuda(mnist_root, tmp_path):
    # A checkpoint written on the CPU continued on the GPU (train.device may change), then
    # a checkpoint written on the GPU continued there.
    fit(_config(mnist_root, **{"train.epochs": 1}), out_dir=tmp_path / "a", final_eval=False)
    res = fit(_config(mnist_root, **{"train.device": "cuda"}), out_dir=tmp_path / "a",
              final_eval=False)
    assert [h[M.EPOCH] for h in res.history] == [1, 2]
    assert next(res.model.parameters()).device.type == "cuda"
    straight = fit(_config(mnist_root, **{"train.device": "cuda", "train.epochs": 3}),
                   out_dir=tmp_path / "b")
    fit(_config(mnist_root, **{"train.device": "cuda", "train.epochs": 2}),
        out_dir=tmp_path / "c", final_eval=False)
    resumed = fit(_config(mnist_root, **{"train.device": "cuda", "train.epochs": 3}),
                  out_dir=tmp_path / "c")
    assert [h[M.EPOCH] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1][M.TRAIN_LOSS] == pytest.approx(
        straight.history[-1][M.TRAIN_LOSS], rel=1e-4)
    assert resumed.final[M.TEST_NLL] == pytest.approx(straight.final[M.TEST_NLL], rel=1e-3)
