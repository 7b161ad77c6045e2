"""The commands: ``python -m sparse_transformer.<train|sample|evaluate|data|sweep>`` run ``cli.<name>.main``.
Each checks its command line before torch loads (one line on stderr, exit 2, nothing written);
``common.py`` holds what they share. Nothing else in the package imports ``cli``."""
