"""``python -m crfkit.cli``: the same as the ``crfkit`` command."""

from .main import main

if __name__ == "__main__":
    main()
