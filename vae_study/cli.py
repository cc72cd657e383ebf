"""The command line: ``python -m vae_study`` / ``vae-study``.

Every command ends in one of these ways:

- success, exit status 0;
- one line on stderr, ``vae-study: error: ...``, exit status 2: a ``VaeStudyError`` (a user's
  mistake or an environment problem), an ``OSError`` the command did not expect (a disk
  that failed), or a bug of vae_study's own (said to be one, with how to see its traceback);
- a study whose every configuration failed: one line, exit status 1;
- the pause (Ctrl-C 130, SIGTERM 143, SIGHUP 129), with the command that continues.

``--debug`` shows the traceback of any error instead of the line. Here are the parser and
``main``; each command is a function of ``commands``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vae_study.commands import cmd_compare, cmd_fit, cmd_report, cmd_run
from vae_study.errors import VaeStudyError
from vae_study.study.pause import continue_command


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
