"""The study file: the run sections plus ``name``, ``output``, ``search``, ``scheduler``,
``resources``, ``ray`` and ``report``, each a frozen dataclass checked once, before anything
starts. No Ray or Optuna imports here: a bad study file fails in milliseconds. The search
section has its own module, ``config.search``; which configurations share a trial,
``config.packing``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vae_study import metrics as M
from vae_study.config.data import resolve_data_paths
from vae_study.config.messages import show
from vae_study.config.packing import check_packs
from vae_study.config.run import RUN_SECTIONS, RunConfig, replace_keys, run_config_from_dict
from vae_study.config.schema import PATH, Section, build_section, rule, to_dict
from vae_study.config.search import SearchConfig, parse_search, search_to_dict
from vae_study.config.yaml_file import apply_overrides, read_yaml
from vae_study.errors import ConfigError
from vae_study.run_files import REPORTS_DIR, RUNS_DIR

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no trailing \n
_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9._\-\[\]:]+:([0-9]{1,5})")  # host:port
_HOST = re.compile(r"[A-Za-z0-9._\-:]+")  # a name, IPv4 or IPv6 address: no spaces, no /
MAX_NAME = 100  # characters; a folder name may have 255 bytes at most
MAX_CONFIGS_PER_TRIAL = 1024
# The metrics ASHA may compare trials on: those reported every epoch.
PER_EPOCH_METRICS = (M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, M.TRAIN_LOSS)


@dataclass(frozen=True)
class OutputConfig(Section):
    SECTION: ClassVar[str] = "output"

    dir: str = rule(RUNS_DIR, PATH)


@dataclass(frozen=True)
class SchedulerConfig(Section):
    SECTION: ClassVar[str] = "scheduler"

    type: Literal["none", "asha"] = "none"
    # The per-epoch metric ASHA compares trials on.
    metric: str = rule(
        M.VAL_NEG_ELBO,
        test=PER_EPOCH_METRICS.__contains__,
        expected="a metric reported every epoch: " + ", ".join(PER_EPOCH_METRICS),
    )
    grace_period: int = rule(
        1, ge=1, expected="an integer >= 1 (epochs before a trial may be stopped)"
    )
    reduction_factor: int = rule(2, ge=2, expected="an integer >= 2")


@dataclass(frozen=True)
class ResourcesConfig(Section):
    SECTION: ClassVar[str] = "resources"

    cpus_per_trial: float = rule(1.0, gt=0, expected="a positive number of CPUs")
    # A GPU share per trial (0.25 packs four trials on a GPU; a trial trains one model on
    # one GPU, so at most 1); auto: a share where the cluster has GPUs, the CPU otherwise.
    gpus_per_trial: float | Literal["auto"] = rule(
        0.0,
        ge=0,
        le=1,
        expected="a fraction in [0, 1] or auto (a trial trains one model on one GPU: more "
        "than 1 would reserve GPUs it never uses)",
    )
    # How many configurations of the search one Ray trial trains fused, as one batched model
    # (vae_study.core.fused.fit_pack); each with its search.replicates seeds, so a trial trains
    # configs_per_trial x replicates members. The searcher holds the shape keys (everything
    # but train.beta, train.lr, train.seed, model.gaussian_std and eval.*) equal in a trial.
    # auto: 1 on a CPU trial (on a CPU fused members gain little over one at a time, so
    # separate trials on separate cores win: benchmarks/bench_fused.py), and on a GPU trial
    # enough configurations for about 32 members, max(1, 32 // replicates) for MLPs.
    # auto is 1 where packs are refused (ASHA, grid, no per-member key searched) and for conv
    # and user models (fused by torch.func.vmap, or one after another: fused.fusion_mode).
    configs_per_trial: int | Literal["auto"] = rule(
        1,
        ge=1,
        le=MAX_CONFIGS_PER_TRIAL,
        expected=f"an integer in [1, {MAX_CONFIGS_PER_TRIAL}] or auto (configurations one "
        "trial trains fused)",
    )


def _is_address(address: str) -> bool:
    """auto, local or host:port with a port in 1-65535."""
    port = _ADDRESS.fullmatch(address)
    return address in ("auto", "local") or (port is not None and 1 <= int(port[1]) <= 65535)


@dataclass(frozen=True)
class RayConfig(Section):
    SECTION: ClassVar[str] = "ray"

    # None: start a local Ray on this machine; auto or host:port: join a running cluster.
    address: str | None = rule(
        None,
        test=_is_address,
        expected="auto, host:port (such as 10.0.0.5:6379) or null for a local Ray",
    )
    dashboard: bool = True
    # The dashboard listens on this host only; anything but 127.0.0.1/localhost exposes it.
    dashboard_host: str = rule(
        "127.0.0.1", test=_HOST.fullmatch, expected="a host name or address such as 127.0.0.1"
    )
    dashboard_port: int = 8265

    def validate(self) -> None:
        if not 0 <= self.dashboard_port <= 65535:
            raise ConfigError(
                f"ray.dashboard_port: got {show(self.dashboard_port)}, a "
                "dashboard port outside 0-65535; use a free port such as 8265"
            )


@dataclass(frozen=True)
class ReportConfig(Section):
    SECTION: ClassVar[str] = "report"

    dir: str = rule(REPORTS_DIR, PATH)
    enabled: bool = True  # build the report when the study ends


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
            f"name: expected the study's name (a folder name such as beta_sweep), got {show(name)}"
        )
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"name: got {show(name)}; use letters, digits, '.', '_' and '-' "
            "only (no path separators, '..' or line breaks: the study folder "
            "must stay inside output.dir)"
        )
    if len(name) > MAX_NAME:
        raise ConfigError(
            f"name: got {show(name)}, {len(name)} characters; use at most "
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
    check_packs(study)
    if study.scheduler.type != "none" and study.search.multi_objective:
        raise ConfigError(
            "scheduler.type: asha compares trials on one metric, but this study "
            "has " + str(len(study.search.objectives)) + " objectives; use "
            "scheduler.type: none for a multi-objective study"
        )
    return study


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
            f"resources.gpus_per_trial: got {show(share)} with train.device: "
            "cpu; the trials would hold GPU shares they never use: set "
            "gpus_per_trial: 0, or train.device: auto"
        )


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and check a study file (with ``--set`` overrides): the only entry point."""
    raw = resolve_data_paths(read_yaml(path), Path(path).parent)  # relative to the file
    return study_from_dict(apply_overrides(raw, overrides))
