"""``wattspan run``'s command line read without argparse, so that the command starts sooner.

argparse loads ``re``, ``gettext`` and ``shutil`` (about 10 ms before the first option is
read), and every millisecond before the spawn is added to the command's wall time. Here the
usual forms are read by hand: ``run [OPTION [VALUE] | OPTION=VALUE ...] [--] CMD ARGS...``
with the options of :func:`wattspan.cli.run_parser.add_run_parser`, spelled out in full.
Anything else (``--help``, an abbreviation, a value that fails its type, a missing command,
``--json`` with ``--json-file``) is left to argparse, which gives the usual help and errors:
:func:`parse` answers ``None`` then. ``tests/test_run_fast.py`` holds the two to the same
answers on every option.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

#: flags (no value), option -> attribute
FLAGS = {"--json": "json", "--mlflow": "mlflow"}
#: options with one value, option -> attribute ("--tag" appends)
VALUES = {
    "--interval": "interval",
    "--store": "store",
    "--name": "name",
    "--description": "description",
    "--tag": "tag",
    "--config": "config",
    "--json-file": "json_file",
    "--carbon-intensity": "carbon_intensity",
    "--country": "country",
    "--pue": "pue",
    "--log-level": "log_level",
}
#: every attribute's value when its option is not given (argparse's defaults)
DEFAULTS: dict[str, Any] = {
    "command": "run",
    "log_level": None,
    "interval": 0.1,
    "store": None,
    "name": None,
    "description": "",
    "tag": [],
    "config": None,
    "json": False,
    "json_file": None,
    "mlflow": False,
    "carbon_intensity": None,
    "country": None,
    "pue": None,
}


class RunArgs:
    """The parsed options as attributes, like argparse's namespace."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"RunArgs({self.__dict__!r})"


def split_tag(text: str) -> tuple[str, str] | None:
    """``K=V`` of ``--tag`` as ``(K, V)``; None when it is not of that form."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), value


def parse(argv: Sequence[str], interval: Callable[[str], float]) -> RunArgs | None:
    """``argv`` (starting with ``run``) read as argparse would, or None to let it."""
    if not argv or argv[0] != "run":
        return None
    out = dict(DEFAULTS, tag=[])
    i, n = 1, len(argv)
    while i < n:
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-"):
            break
        name, eq, inline = a.partition("=")
        if name in FLAGS and not eq:
            out[FLAGS[name]] = True
            i += 1
            continue
        if name not in VALUES:
            return None  # --help, an abbreviation, a short option, a typo
        if eq:
            value, i = inline, i + 1
        elif i + 1 < n and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 2
        else:
            return None  # no value, or one that argparse would read as an option
        dest = VALUES[name]
        try:
            if dest == "tag":
                pair = split_tag(value)
                if pair is None:
                    return None
                out["tag"].append(pair)
            elif dest == "interval":
                out[dest] = interval(value)
            elif dest in ("carbon_intensity", "pue"):
                out[dest] = float(value)
            else:
                out[dest] = value
        except Exception:  # its type refused it: argparse says how
            return None
    cmd = list(argv[i:])
    if not cmd or (out["json"] and out["json_file"] is not None):
        return None
    out["cmd"] = cmd
    return RunArgs(out)
