"""The search section in Optuna's terms: the space as a define-by-run function, the sampler.

The study file's ``search.space`` compiles to a define-by-run function (the form Ray Tune's
``OptunaSearch`` takes); Optuna parameter names are the run keys themselves
(``train.beta``), so ``optuna-dashboard`` shows what the user wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: config.search builds the sampler to check its options
    from vae_study.config.search import SearchConfig
    from vae_study.config.space import Param


def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be scalars: lists travel as JSON text."""
    return json.dumps(list(value)) if isinstance(value, tuple | list) else value


class define_by_run:  # noqa: N801 - used like the function Optuna's docs call it
    """The space as a function of an ``optuna.Trial`` that suggests every searched key.

    A class rather than a closure so Ray can pickle the searcher into its experiment state.
    """

    def __init__(self, space: tuple[Param, ...]) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        for p in self.space:
            if p.kind == "choice":
                trial.suggest_categorical(p.key, [_encode(v) for v in p.values])
            elif p.kind == "int":
                trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
            else:
                trial.suggest_float(p.key, p.low, p.high, log=p.kind == "log_uniform")


def decode_params(space: tuple[Param, ...], params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's parameter values as run-key values (JSON text back to lists)."""
    kinds = {p.key: p for p in space}
    out = {}
    for key, value in params.items():
        p = kinds.get(key)
        if (
            p is not None
            and p.kind == "choice"
            and isinstance(value, str)
            and any(isinstance(v, tuple) for v in p.values)
        ):
            value = json.loads(value)
        out[key] = value
    return out


def encode_point(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _encode(v) for k, v in point.items()}


def make_sampler(search: SearchConfig, asked: int = 0) -> Any:
    """The Optuna sampler the study file names, seeded with ``search.seed`` plus ``asked``,
    the configurations the study's record already holds: a sampler's random stream is not
    part of the record, so a resumed search seeded as the first run was would draw that run's
    first configurations again; seeded so, a resume is as reproducible and draws anew."""
    import optuna

    from vae_study.errors import ConfigError

    options = dict(search.sampler_options)
    seed = (search.seed + asked) % 2**32
    try:
        if search.algorithm == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if search.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if search.algorithm == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
        grid = {p.key: [_encode(v) for v in p.values] for p in search.space}
        return optuna.samplers.GridSampler(grid, seed=seed, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"search.sampler_options: {str(exc)[:200]} (they are passed to "
            f"Optuna's {search.algorithm} sampler)"
        ) from None
