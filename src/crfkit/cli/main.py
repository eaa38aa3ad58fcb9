"""The ``crfkit`` command: one entry point, subcommands.

Each subcommand lives in its own module of this package and exposes
``register(app: typer.Typer) -> None``; modules listed in ``SUBCOMMANDS`` are loaded
when present.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

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


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    app(args=argv, prog_name="crfkit")


if __name__ == "__main__":  # pragma: no cover
    main()
