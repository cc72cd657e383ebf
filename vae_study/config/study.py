"""The study file: the run sections plus ``name``, ``output``, ``search``, ``scheduler``,
``resources``, ``ray`` and ``report``, each a frozen dataclass checked once, before anything
starts. No Ray or Optuna imports here: a bad study file fails in milliseconds. The search
section has its own module, ``search_config``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vae_study import metrics as M
from vae_study.config.run import (
    RUN_SECTIONS,
    RunConfig,
    Section,
    build_section,
    check_path,
    replace_keys,
    resolve_data_paths,
    run_config_from_dict,
    to_dict,
)
from vae_study.config.search import (
    MEMBER_KEYS,
    MEMBER_PREFIXES,
    SearchConfig,
    parse_search,
    search_to_dict,
)
from vae_study.config.yaml_file import _show, apply_overrides, read_yaml
from vae_study.errors import ConfigError
from vae_study.run_files import REPORTS_DIR, RUNS_DIR

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no trailing \n
_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9._\-\[\]:]+:([0-9]{1,5})")  # host:port
_HOST = re.compile(r"[A-Za-z0-9._\-:]+")  # a name, IPv4 or IPv6 address: no spaces, no /
MAX_NAME = 100  # characters; a folder name may have 255 bytes at most
MAX_CONFIGS_PER_TRIAL = 1024
GPU_PACK_MEMBERS = 32  # members a GPU trial aims at with configs_per_trial: auto


@dataclass(frozen=True)
class OutputConfig(Section):
    SECTION: ClassVar[str] = "output"

    dir: str = RUNS_DIR

    def validate(self) -> None:
        check_path("output.dir", self.dir)


@dataclass(frozen=True)
class SchedulerConfig(Section):
    SECTION: ClassVar[str] = "scheduler"

    type: Literal["none", "asha"] = "none"
    metric: str = M.VAL_NEG_ELBO  # the per-epoch metric ASHA compares trials on
    grace_period: int = 1
    reduction_factor: int = 2

    def validate(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(
                f"scheduler.grace_period: got {_show(self.grace_period)}, "
                "expected an integer >= 1 (epochs before a trial may be stopped)"
            )
        if self.reduction_factor < 2:
            raise ConfigError(
                f"scheduler.reduction_factor: got {_show(self.reduction_factor)}, "
                "expected an integer >= 2"
            )
        per_epoch = (M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, M.TRAIN_LOSS)
        if self.metric not in per_epoch:
            raise ConfigError(
                f"scheduler.metric: got {_show(self.metric)}, expected a metric "
                "reported every epoch: " + ", ".join(per_epoch)
            )


@dataclass(frozen=True)
class ResourcesConfig(Section):
    SECTION: ClassVar[str] = "resources"

    cpus_per_trial: float = 1.0
    # A GPU share per trial (0.25 packs four trials on a GPU; a trial trains one model on
    # one GPU, so at most 1); auto: a share where the cluster has GPUs, the CPU otherwise.
    gpus_per_trial: float | Literal["auto"] = 0.0
    # How many configurations of the search one Ray trial trains fused, as one batched model
    # (vae_study.core.fused.fit_pack); each with its search.replicates seeds, so a trial trains
    # configs_per_trial x replicates members. The searcher holds the shape keys (everything
    # but train.beta, train.lr, train.seed, model.gaussian_std and eval.*) equal in a trial.
    # auto: 1 on a CPU trial (benchmarks/bench_fused.py on this project's 2-core CPU: fused
    # members ran at most 1.15x faster than one at a time, so separate trials on separate
    # cores win), and on a GPU trial enough configurations for about 32 members,
    # max(1, 32 // replicates) for MLPs: the GPU goal, not yet measured on a GPU.
    # auto is 1 where packs are refused (ASHA, grid, no per-member key searched) and for conv
    # and user models (fused by torch.func.vmap, or one after another: fused.fusion_mode).
    configs_per_trial: int | Literal["auto"] = 1

    def validate(self) -> None:
        n = self.configs_per_trial
        if n != "auto" and not 1 <= n <= MAX_CONFIGS_PER_TRIAL:
            raise ConfigError(
                f"resources.configs_per_trial: got {_show(n)}, expected an integer in "
                f"[1, {MAX_CONFIGS_PER_TRIAL}] or auto (configurations one trial trains fused)"
            )
        if not (self.cpus_per_trial > 0):
            raise ConfigError(
                f"resources.cpus_per_trial: got {_show(self.cpus_per_trial)}, "
                "expected a positive number of CPUs"
            )
        g = self.gpus_per_trial
        if g != "auto" and not 0 <= g <= 1:
            raise ConfigError(
                f"resources.gpus_per_trial: got {_show(g)}, expected a fraction "
                "in [0, 1] or auto (a trial trains one model on one GPU: more "
                "than 1 would reserve GPUs it never uses)"
            )


@dataclass(frozen=True)
class RayConfig(Section):
    SECTION: ClassVar[str] = "ray"

    # None: start a local Ray on this machine; auto or host:port: join a running cluster.
    address: str | None = None
    dashboard: bool = True
    # The dashboard listens on this host only; anything but 127.0.0.1/localhost exposes it.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265

    def validate(self) -> None:
        if self.address is not None and self.address not in ("auto", "local"):
            port = _ADDRESS.fullmatch(self.address)
            if port is None or not 1 <= int(port.group(1)) <= 65535:
                raise ConfigError(
                    f"ray.address: got {_show(self.address)}, expected auto, "
                    "host:port (such as 10.0.0.5:6379) or null for a local Ray"
                )
        if not _HOST.fullmatch(self.dashboard_host):
            raise ConfigError(
                f"ray.dashboard_host: got {_show(self.dashboard_host)}, expected "
                "a host name or address such as 127.0.0.1"
            )
        if not 0 <= self.dashboard_port <= 65535:
            raise ConfigError(
                f"ray.dashboard_port: got {_show(self.dashboard_port)}, a "
                "dashboard port outside 0-65535; use a free port such as 8265"
            )


@dataclass(frozen=True)
class ReportConfig(Section):
    SECTION: ClassVar[str] = "report"

    dir: str = REPORTS_DIR
    enabled: bool = True  # build the report when the study ends

    def validate(self) -> None:
        check_path("report.dir", self.dir)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    base: RunConfig
    search: SearchConfig
    output: OutputConfig = field(default_factory=OutputConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def folder(self) -> Path:
        return Path(self.output.dir) / self.name

    def trial_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The run configuration of one trial: the base with the searched keys set."""
        return replace_keys(self.base, params)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **to_dict(self.base)}
        out["output"] = to_dict(self.output)
        out["search"] = search_to_dict(self.search)
        for key in ("scheduler", "resources", "ray", "report"):
            out[key] = to_dict(getattr(self, key))
        return out

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study: everything that changes a trial's result."""
        d = self.to_dict()
        return {k: d[k] for k in (*RUN_SECTIONS, "search", "scheduler")}


STUDY_SECTIONS = ("name", "output", "search", "scheduler", "resources", "ray", "report")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"name: expected the study's name (a folder name such as beta_sweep), got {_show(name)}"
        )
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"name: got {_show(name)}; use letters, digits, '.', '_' and '-' "
            "only (no path separators, '..' or line breaks: the study folder "
            "must stay inside output.dir)"
        )
    if len(name) > MAX_NAME:
        raise ConfigError(
            f"name: got {_show(name)}, {len(name)} characters; use at most "
            f"{MAX_NAME} (it names a folder)"
        )
    return name


def study_from_dict(raw: Mapping[str, Any]) -> StudyConfig:
    base = run_config_from_dict(raw, extra_sections=STUDY_SECTIONS)  # unknown sections too
    study = StudyConfig(
        name=check_name(raw.get("name")),
        base=base,
        search=parse_search(raw.get("search"), base),
        output=build_section(OutputConfig, raw.get("output"), "output"),
        scheduler=build_section(SchedulerConfig, raw.get("scheduler"), "scheduler"),
        resources=build_section(ResourcesConfig, raw.get("resources"), "resources"),
        ray=build_section(RayConfig, raw.get("ray"), "ray"),
        report=build_section(ReportConfig, raw.get("report"), "report"),
    )
    if study.scheduler.type == "asha" and study.scheduler.grace_period > study.base.train.epochs:
        raise ConfigError(
            f"scheduler.grace_period: got {study.scheduler.grace_period}, longer "
            f"than train.epochs={study.base.train.epochs}; ASHA needs "
            "grace_period <= train.epochs"
        )
    _check_device_and_share(study)
    _check_packs(study)
    if study.scheduler.type != "none" and study.search.multi_objective:
        raise ConfigError(
            "scheduler.type: asha compares trials on one metric, but this study "
            "has " + str(len(study.search.objectives)) + " objectives; use "
            "scheduler.type: none for a multi-objective study"
        )
    return study


def pack_refusal(study: StudyConfig) -> str | None:
    """Why this study's trials cannot train several configurations fused (None: they can)."""
    if study.scheduler.type == "asha":
        return (
            "ASHA stops whole Ray trials, and must decide per configuration (on its "
            "replicate mean): with one configuration per trial it does"
        )
    if study.search.algorithm == "grid":
        return "the grid sampler asks for whole grid points, which a pack cannot hold fixed"
    if not any(is_member_key(p.key) for p in study.search.space):
        return (
            "packed configurations share every searched key but "
            + ", ".join(MEMBER_KEYS)
            + " and eval.*, and this search varies none of those: they would be copies"
        )
    return None


def is_member_key(key: str) -> bool:
    """Whether fused members of one trial may differ in ``key`` (beta, lr, seed, ...)."""
    return key in MEMBER_KEYS or key.startswith(MEMBER_PREFIXES)


def _only_mlp(study: StudyConfig) -> bool:
    """Whether every trial is an MLP (the stacked path, the one benchmarked on a GPU)."""
    archs = {study.base.model.arch}
    for p in study.search.space:
        if p.key == "model.arch":
            archs |= set(p.values) if p.kind == "choice" else set()
    return archs == {"mlp"}


def _check_packs(study: StudyConfig) -> None:
    """resources.configs_per_trial and search.replicates against what fused members can do."""
    n = study.resources.configs_per_trial
    if n == "auto" or n == 1:
        return
    why = pack_refusal(study)
    if why is not None:
        raise ConfigError(
            f"resources.configs_per_trial: got {n}, but {why}; use configs_per_trial: 1"
        )


def configs_per_trial(study: StudyConfig, *, gpu: bool) -> int:
    """``resources.configs_per_trial`` resolved for trials with (``gpu``) or without a GPU
    share, at most ``search.num_trials``."""
    n = study.resources.configs_per_trial
    if n == "auto":
        n = 1
        if gpu and _only_mlp(study) and pack_refusal(study) is None:
            n = max(1, GPU_PACK_MEMBERS // study.search.replicates)
    return min(n, study.search.num_trials)


def _check_device_and_share(study: StudyConfig) -> None:
    """train.device and resources.gpus_per_trial must agree: a trial without a GPU share
    runs on the CPU, and a CPU trial must not hold GPU shares others could use."""
    device, share = study.base.train.device, study.resources.gpus_per_trial
    if device.startswith("cuda") and share == 0:
        raise ConfigError(
            f"train.device: got {device!r} with resources.gpus_per_trial: 0; a "
            "trial without a GPU share runs on the CPU: set "
            "resources.gpus_per_trial (a share such as 0.5, or auto), or "
            "train.device: auto"
        )
    if device == "cpu" and share not in (0, "auto"):
        raise ConfigError(
            f"resources.gpus_per_trial: got {_show(share)} with train.device: "
            "cpu; the trials would hold GPU shares they never use: set "
            "gpus_per_trial: 0, or train.device: auto"
        )


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and check a study file (with ``--set`` overrides): the only entry point."""
    raw = resolve_data_paths(read_yaml(path), Path(path).parent)  # relative to the file
    return study_from_dict(apply_overrides(raw, overrides))
