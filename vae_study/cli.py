"""The command line: ``python -m vae_study`` / ``vae-study``.

Every command ends in one of these ways:

- success, exit status 0;
- one line on stderr, ``vae-study: error: ...``, exit status 2: a ``VaeStudyError`` (a user's
  mistake or an environment problem), an ``OSError`` the command did not expect (a disk
  that failed), or a bug of vae_study's own (said to be one, with how to see its traceback);
- a study whose every configuration failed: one line, exit status 1;
- the pause (Ctrl-C 130, SIGTERM 143, SIGHUP 129), with the command that continues.

``--debug`` shows the traceback of any error instead of the line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae_study.errors import VaeStudyError
from vae_study.run_files import REPORTS_DIR, RUNS_DIR
from vae_study.study.pause import continue_command


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
    from vae_study.core.train import FINAL_FILE, check_output_folder, fit

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
    from vae_study.core.train import CHECKPOINT_DIR

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


def _add_debug(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the traceback of an error instead of its one line",
    )


def _add_set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a key, e.g. --set {example} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-study", description="Hyperparameter studies of variational autoencoders."
    )
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    fit_p = sub.add_parser(
        "fit", help="train the one configuration a study file describes (no search, no Ray)"
    )
    fit_p.add_argument("config", help="a study or run YAML file")
    _add_set(fit_p, "train.beta=0.5")
    fit_p.add_argument("--out", help="output folder (default runs/<config name>)")
    fit_p.add_argument(
        "--fresh", action="store_true", help="delete the output folder first instead of resuming it"
    )
    _add_debug(fit_p, argparse.SUPPRESS)  # also after the verb
    fit_p.set_defaults(func=cmd_fit)

    run_p = sub.add_parser(
        "run", help="run (or continue) a study: many trials under Ray Tune, chosen by Optuna"
    )
    run_p.add_argument("study", help="a study YAML file, e.g. studies/beta_sweep.yaml")
    _add_set(run_p, "search.num_trials=50")
    run_p.add_argument(
        "--fresh",
        action="store_true",
        help="delete the study folder first instead of continuing it",
    )
    run_p.add_argument(
        "--no-report", action="store_true", help="do not build the report when the study ends"
    )
    _add_debug(run_p, argparse.SUPPRESS)  # also after the verb
    run_p.set_defaults(func=cmd_run)

    rep_p = sub.add_parser(
        "report",
        help="build the report of a study folder (no Ray needed; "
        "works on running or interrupted studies)",
    )
    rep_p.add_argument("folder", help="the study folder, e.g. runs/beta_sweep")
    rep_p.add_argument("--out", help="output folder (default reports/<name>)")
    _add_debug(rep_p, argparse.SUPPRESS)  # also after the verb
    rep_p.set_defaults(func=cmd_report)

    cmp_p = sub.add_parser(
        "compare",
        help="compare study folders: their R-D planes on shared axes, a headline table, "
        "paired differences, tables.tex and tables.csv (no Ray needed)",
    )
    cmp_p.add_argument("folders", nargs="+", metavar="STUDY_DIR", help="two or more study folders")
    cmp_p.add_argument("--out", help="output folder (default reports/compare)")
    cmp_p.add_argument(
        "--allow-different-evaluation",
        action="store_true",
        help="draw studies evaluated differently (data, test examples, eval.k, quantity) on "
        "separate panels instead of refusing them",
    )
    _add_debug(cmp_p, argparse.SUPPRESS)
    cmp_p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VaeStudyError as exc:
        if args.debug:
            raise
        _error_line(str(exc))
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt as exc:
        from vae_study.study.pause import exit_status

        if args.command in ("run", "fit"):
            print(
                "vae-study: interrupted; to continue, run the same command again: "
                f"{continue_command(argv)}",
                file=sys.stderr,
            )
        else:
            print("vae-study: interrupted", file=sys.stderr)
        return exit_status(exc)  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
    except OSError as exc:  # a disk or a file system that failed under the command
        if args.debug:
            raise
        from vae_study.errors import disk_full, disk_full_error

        if disk_full(exc):
            _error_line(str(disk_full_error(exc.filename or ".")))
        else:
            where = f" ({exc.filename})" if exc.filename else ""
            _error_line(f"{exc.strerror or exc}{where}; check that path and run the command again")
        return 2
    except Exception as exc:  # a bug of vae_study's own, or of a library under it
        if args.debug:
            raise
        _error_line(
            f"internal error, {type(exc).__name__}: {exc}; this is a bug of vae_study: "
            f"run the same command with --debug for its traceback and report it"
        )
        return 2


def _error_line(message: str) -> None:
    """One line on stderr, whatever the message holds (a path with a line break, a long
    problem)."""
    message = " ".join(message.split("\n"))
    if len(message) > 2000:
        message = message[:1997] + "..."
    print(f"vae-study: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
