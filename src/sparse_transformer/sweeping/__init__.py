"""Sweeps: ``conf/sweep/<name>.yaml`` in W&B's format, run by W&B agents or offline (the command:
``cli/sweep.py``, also ``python -m sparse_transformer.sweep``).

- ``spec``: the sweep file and its checks (structure, the command, every parameter value through
  the training command line's own validation) and the ``key=value`` overrides of a local run;
- ``sweeps_package``: W&B's optional search engine, imported so that no folder can shadow it;
- ``search``: the next trial's parameters, from that engine (grid, random, bayes) or built in (grid, random);
- ``command``: the command line a W&B agent builds for a trial (wandb's own macro expansion);
- ``state``: the runner's ``trials.json`` (checked: it names folders the runner deletes);
- ``runner``: trials run here, one subprocess each, with their progress on the terminal;
- ``leaderboard``: finished trials ranked by the metric; failed ones (a non-finite metric too) last;
- ``remote``: creating a W&B sweep and starting an agent (needs the W&B server).

Everything here is torch-free: a bad sweep fails in about a second. The package is
``sparse_transformer.sweeping``, not ``sweeps``: the runner writes to ``./sweeps/``.
"""
