"""``python -m sparse_transformer.data``: the data command, whose home is ``cli/data.py``."""

from ..cli.data import main

if __name__ == "__main__":
    main()
