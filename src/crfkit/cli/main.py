"""The ``crfkit`` command: one entry point, subcommands.

Each subcommand lives in its own module of this package and exposes
``register(app: typer.Typer) -> None``; modules listed in ``SUBCOMMANDS`` are loaded
when present.

Errors are one line on stderr: a usage error (an unknown option, ``--threads abc``) as
``error: crfkit stereo: Invalid value for '--threads': ...`` with exit status 2, and crfkit's own
input errors (``CRFValueError`` / ``CRFTypeError``) and file-system errors (a missing file, an
unwritable folder) that reach this entry point as ``error: MESSAGE`` with status 2, without a
traceback (set ``CRFKIT_TRACEBACK=1`` to see one).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile

SUBCOMMANDS = ("stereo", "solve", "learn", "segment")

HELP = """crfkit: inference and learning in pairwise Markov and conditional random fields.

Subcommands run the main jobs: `stereo` (the stereo demo on the bundled Middlebury
motorcycle pair), `solve` (MAP / marginals of a UAI model file), `learn` (parameter
learning experiments), `segment` (CNN+CRF segmentation training). Use
`crfkit SUBCOMMAND --help` for each.
"""


def build_app():
    try:
        import typer
    except ImportError:  # pragma: no cover - depends on the install
        sys.stderr.write(
            "crfkit's command line needs the 'cli' extra: pip install 'crfkit[cli]'\n"
        )
        raise SystemExit(2) from None
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    for name in SUBCOMMANDS:
        modname = f"{__package__}.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        module = importlib.import_module(modname)
        module.register(app)
    return app


def check_out_folder(out: str) -> None:
    """Make sure ``--out`` is a writable folder before any work: refuse an empty path, an existing
    file, a path under a file or a place where no file can be written (creating the folder and a
    probe file, removed at once)."""
    from .._validation import CRFValueError

    if not out or not out.strip():
        raise CRFValueError(f"expected --out a folder path, got {out!r}")
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CRFValueError(f"expected --out a folder, got {out!r}, which is an existing file")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise CRFValueError(f"expected --out under a folder, got {out!r}, under the file {probe!r}")
    try:
        os.makedirs(path, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.remove(name)
    except OSError as exc:
        raise CRFValueError(f"expected a writable --out, got {out!r} ({exc.strerror or exc})") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the ``crfkit`` command (``argv``: the arguments, default ``sys.argv[1:]``); exits
    (``SystemExit``) with status 0, 2 for bad input, or the status a command asked for."""
    click = _click_exceptions()

    from .._validation import CRFTypeError, CRFValueError

    app = build_app()
    try:
        rv = app(args=argv, prog_name="crfkit", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # a group without a subcommand: its help
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:  # usage errors (bad option values, unknown options) and BadParameter
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see '{ctx.command_path} --help')" if isinstance(exc, click.UsageError) and ctx is not None else ""
        _fail(f"{where}{exc.format_message()}{hint}", exc.exit_code)
    except typer_abort():
        _fail("aborted", 1)
    except (CRFValueError, CRFTypeError, OSError) as exc:
        if os.environ.get("CRFKIT_TRACEBACK"):
            raise
        _fail(str(exc) if not isinstance(exc, OSError) or exc.filename is None else _os_message(exc))
    # as in click's standalone mode: always exit, with the status of typer.Exit(code) if a command gave one
    raise SystemExit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


def _click_exceptions():
    """The exception classes of the click that typer runs on (typer >= 0.22 vendors its own)."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older typer on the click package
        from click import exceptions
    return exceptions


def typer_abort():
    import typer

    return typer.Abort


def _os_message(exc: OSError) -> str:
    """``[Errno 2] No such file or directory: 'x'`` as ``no such file or directory: x``."""
    what = (exc.strerror or type(exc).__name__).lower()
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{what}: {path}"


if __name__ == "__main__":  # pragma: no cover
    main()
