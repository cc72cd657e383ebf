"""The command line's commands, one function each (``cmd_fit``, ``cmd_run``, ``cmd_report``,
``cmd_compare``), given the parsed arguments of ``cli.build_parser``; each returns its exit
status and raises a ``VaeStudyError`` for a user's mistake (``cli.main`` turns it into one
line). Ray, torch, pandas and matplotlib are imported only inside the command that needs
them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vae_study.errors import VaeStudyError
from vae_study.run_files import REPORTS_DIR, RUNS_DIR


def _progress_printer(epochs: int):
    """A one-line progress bar on a terminal; silent per batch when output is redirected."""
    tty = sys.stderr.isatty()
    started = time.perf_counter()

    def progress(epoch: int, done: int, total: int) -> None:
        if not tty or (done % 10 and done != total):
            return
        width = 30
        filled = width * done // total
        elapsed = time.perf_counter() - started
        sys.stderr.write(
            f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{total} batches, {elapsed:.0f}s"
        )
        sys.stderr.flush()

    return progress


def _eval_printer(k: int):
    """Progress of the test NLL (eval.k samples per example can take minutes on a CPU)."""
    tty = sys.stderr.isatty()
    started = time.perf_counter()
    shown = {"quarter": -1}

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        if tty:
            filled = 30 * done // total
            sys.stderr.write(
                f"\rtest NLL, eval.k={k}: [{'#' * filled}{'.' * (30 - filled)}] "
                f"{done}/{total} examples, {elapsed:.0f}s"
            )
            if done == total:
                sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        elif 4 * done // total > shown["quarter"]:
            shown["quarter"] = 4 * done // total
            print(
                f"last epoch trained; test NLL with eval.k={k}: {done}/{total} examples, "
                f"{elapsed:.0f}s",
                flush=True,
            )

    return progress


def cmd_fit(args: argparse.Namespace) -> int:
    from vae_study import metrics as M
    from vae_study.config.run import load_run_config
    from vae_study.config.study import STUDY_SECTIONS
    from vae_study.core.run_state import check_output_folder
    from vae_study.core.train import fit
    from vae_study.run_files import FINAL_FILE

    config = load_run_config(args.config, args.set, extra_sections=STUDY_SECTIONS)
    out = _out_folder(args.out, Path(RUNS_DIR) / Path(args.config).stem)
    check_output_folder(out)  # before anything is printed; --fresh empties it once data loads
    print(f"vae_study fit: {args.config} -> {out}", flush=True)
    progress = _progress_printer(config.train.epochs)
    tty = sys.stderr.isatty()

    def on_epoch(row: dict[str, float], _ckpt: Path | None) -> None:
        if tty:
            sys.stderr.write("\r\033[K")
        print(
            f"epoch {int(row[M.EPOCH]):>3}/{config.train.epochs}  "
            f"loss {row[M.TRAIN_LOSS]:8.3f}  "
            f"val -elbo {row.get(M.VAL_NEG_ELBO, float('nan')):8.3f}  "
            f"rate {row.get(M.VAL_RATE, float('nan')):7.3f}  "
            f"distortion {row.get(M.VAL_DISTORTION, float('nan')):8.3f}  "
            f"({row[M.EPOCH_SECONDS]:.1f}s)",
            flush=True,
        )

    try:
        result = fit(
            config,
            out_dir=out,
            on_epoch=on_epoch,
            progress=progress,
            eval_progress=_eval_printer(config.eval.k),
            fresh=args.fresh,
        )
    except KeyboardInterrupt:
        if tty:
            sys.stderr.write("\r\033[K")
        print(f"vae-study: interrupted; {_how_to_continue(args, out)}", file=sys.stderr)
        return 130
    bound = M.bound_key("test", config.quantity)
    print(
        f"final metrics, nats per example; {bound} is a {M.QUANTITY_WORDS[config.quantity]}"
        f", eval.k={config.eval.k} on {result.final.get(M.TEST_NLL_EXAMPLES)} test examples:"
    )
    for key, value in result.final.items():
        if isinstance(value, float):
            print(f"  {key:22s} {value:10.3f}")
        elif isinstance(value, int):
            print(f"  {key:22s} {value:10d}")
    print(f"wrote {out / FINAL_FILE}, {out / 'metrics.jsonl'}, {out / 'checkpoint'}")
    return 0


def _out_folder(given: str | None, default: Path) -> Path:
    """The folder ``--out`` names, ``default`` without it; an empty ``--out ''`` is refused
    (it would mean the current directory)."""
    from vae_study.errors import ConfigError

    if given is None:
        return default
    if not given.strip():
        raise ConfigError(f"--out: got {given!r}, expected a folder, not an empty path")
    return Path(given)


def _how_to_continue(args: argparse.Namespace, out: Path) -> str:
    """One sentence: what the interrupted fit kept and the command that continues it."""
    import shlex

    from vae_study.core import checkpoint as ckpt
    from vae_study.run_files import CHECKPOINT_DIR

    command = shlex.join(
        [
            "python",
            "-m",
            "vae_study",
            "fit",
            args.config,
            *[a for s in args.set for a in ("--set", s)],
            "--out",
            str(out),
        ]
    )
    if not ckpt.exists(out / CHECKPOINT_DIR):
        return f"no epoch had finished, nothing to keep; start again with: {command}"
    try:
        epoch = ckpt.load(out / CHECKPOINT_DIR).epoch
    except VaeStudyError:
        epoch = None
    kept = f"epoch {epoch}" if epoch is not None else "the last finished epoch"
    return (
        f"{out / CHECKPOINT_DIR} holds {kept}; continue from it with the same command "
        f"(without --fresh): {command}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from vae_study.config.study import load_study

    study = load_study(args.study, args.set)  # every key checked before Ray starts
    if study.report.enabled and not args.no_report:  # not found out hours later, at the end
        from vae_study.report.report_folder import check_report_folder

        check_writable(Path(study.report.dir), "report.dir")
        check_report_folder(Path(study.report.dir) / study.name, study.folder)
    # Ray is imported only once the study file is known to be good.
    from vae_study.study.driver import run_study

    folder = run_study(study, fresh=args.fresh)
    if study.report.enabled and not args.no_report:
        from vae_study.report.page import build_report

        out = build_report(folder, Path(study.report.dir) / study.name)
        print(f"report: {out / 'index.html'}")
    return 0


def check_writable(path: Path, key: str) -> None:
    """Refuse a folder that could not be created or written, creating nothing: its first
    existing ancestor must be a folder this user may write into."""
    import os

    from vae_study.errors import ConfigError

    existing = path.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{key}: {path} cannot be created: {existing} is not a folder; choose another {key}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}: {path} cannot be written: {existing} is not writable by "
            f"this user; choose another {key}"
        )


def cmd_report(args: argparse.Namespace) -> int:
    from vae_study.records.folder import load_folder
    from vae_study.report.page import build_report

    name = load_folder(args.folder).study.name
    out = build_report(args.folder, _out_folder(args.out, Path(REPORTS_DIR) / name))
    print(f"report: {out / 'index.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vae_study.report.comparison import compare

    out = compare(
        args.folders,
        _out_folder(args.out, Path(REPORTS_DIR) / "compare"),
        allow_different_evaluation=args.allow_different_evaluation,
    )
    print(f"comparison: {out / 'index.html'}")
    return 0
