"""What only the bundled demo profile uses, kept apart so the real path reads without it.

- ``synthetic`` (and its drawings, ``figures``): a MathVista-schema set rendered with PIL, for a machine with no
  hub access;
- ``tiny_model``: a Qwen3-VL checkpoint at a size that trains on two CPU cores;
- ``warmstart``: the short supervised pass that gives the tiny model a starting point RL can improve.

Each writes ordinary files (a hub-layout parquet, a checkpoint folder) that the real path then reads like any
other source or model.
"""
