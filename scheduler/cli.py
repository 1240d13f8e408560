"""Command-line interface: ``wsched replay`` and ``wsched profiles``.

This is the only module that configures logging or writes to the terminal: the
replay summary and the profile list go to stdout; logs, the progress bar and
error messages go to stderr. Bad input (trace, configuration, files) ends with a
one-line ``wsched: error: ...`` and exit status 2, like argparse's usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .config import Config, ConfigError, load_config, load_profile, profile_names
from .lwf import TraceError, read_lwf
from .replay import ReplayResult, replay, write_json

#: Traces with more requests than this get a progress bar (on a terminal).
PROGRESS_THRESHOLD = 1000
EXIT_ERROR = 2
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

log = logging.getLogger("scheduler.cli")  # not __main__ under python -m

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        for key, value in _extras(record).items():
            text = str(value)
            if not text or any(c.isspace() or c in "\"'=" for c in text):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_handler: logging.Handler | None = None


def configure_logging(level: str, as_json: bool) -> None:
    """Send the root logger's records at ``level`` and above to stderr."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:  # main() called again in the same process
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root.addHandler(_handler)
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsched", description="Virtual-workspace lease scheduler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rp = sub.add_parser(
        "replay", help="replay an LWF trace in simulated time",
        description="Replay an LWF trace and write every lease's schedule as JSON. "
        "The configuration starts from the built-in defaults, or from --profile, "
        "and --config overrides it key by key. The site comes from the trace's "
        "<site>, or else from the [site] table of the configuration.")
    rp.add_argument("trace", type=Path, metavar="TRACE.lwf", help="the lease trace")
    rp.add_argument("--profile", metavar="NAME",
                    help="built-in profile to start from (one of: "
                    f"{', '.join(profile_names())}; default: built-in defaults)")
    rp.add_argument("--config", type=Path, metavar="FILE.toml",
                    help="TOML file whose settings override the profile's")
    rp.add_argument("--json", type=Path, required=True, metavar="OUT.json", dest="json_out",
                    help="where to write the schedule")
    rp.add_argument("--quiet", action="store_true",
                    help="print no summary and no progress bar")
    _logging_options(rp)

    pp = sub.add_parser("profiles", help="list the built-in configuration profiles")
    _logging_options(pp)
    return parser


def _logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=LEVELS,
                   metavar="LEVEL", help=f"one of {', '.join(LEVELS)} (default: WARNING)")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line on stderr")


def resolve_config(profile: str | None, config_file: Path | None) -> Config:
    config = load_profile(profile) if profile is not None else Config()
    if config_file is not None:
        config = load_config(config_file, base=config)
    return config


def cmd_replay(args: argparse.Namespace) -> int:
    config = resolve_config(args.profile, args.config)
    out: Path = args.json_out
    if not out.parent.is_dir():  # fail before a long replay, not after
        raise OSError(f"{out}: cannot write: no directory {str(out.parent)!r}")
    workload = read_lwf(args.trace, default_site=config.default_site())
    assert workload.site is not None  # read_lwf raises when there is none
    n = len(workload.requests)
    log.info("trace loaded", extra={"trace": str(args.trace), "requests": n,
                                    "nodes": len(workload.site.nodes)})

    show = not args.quiet and n > PROGRESS_THRESHOLD and sys.stderr.isatty()
    with tqdm(total=n, desc="replay", unit="lease", file=sys.stderr, disable=not show) as bar, \
            (logging_redirect_tqdm() if show else nullcontext()):
        def progress(i: int) -> None:
            bar.update(i - bar.n)

        result = replay(workload.site, config, workload.requests,
                        progress=progress if show else None)

    write_json(result, out)
    log.info("schedule written", extra={"path": str(out)})
    if not args.quiet:
        print_summary(workload.name, result, out)
    return 0


def print_summary(name: str, result: ReplayResult, out: Path) -> None:
    s = result.summary()
    states = ", ".join(f"{state} {count}" for state, count in s["states"].items())
    print(f"{name}: {s['leases']} leases ({states or 'none'})")
    print(f"  makespan     {s['makespan']} s")
    print(f"  utilization  {s['utilization']:.1%}")
    print(f"  transfers    {s['transfers']}")
    print(f"  suspensions  {s['suspensions']}")
    print(f"  migrations   {s['migrations']}")
    print(f"schedule written to {out}")


def cmd_profiles(args: argparse.Namespace) -> int:
    for name in profile_names():
        print(name)
    return 0


def _message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        msg = f"{where}{e.strerror}"
    else:
        msg = str(e)
    return " ".join(msg.split())  # one line, whatever the source


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    commands = {"replay": cmd_replay, "profiles": cmd_profiles}
    try:
        return commands[args.command](args)
    except (TraceError, ConfigError, OSError, ValueError) as e:
        print(f"wsched: error: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
