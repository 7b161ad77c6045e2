"""The commands: ``python -m sparse_transformer.<train|sample|evaluate|data|sweep>`` run these modules' ``main``."""
