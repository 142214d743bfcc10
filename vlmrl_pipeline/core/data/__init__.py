"""Source data to training rows, without Dagster: the assets call these modules and the tests call them directly.

Three source layouts end in one canonical schema (``schema.MATHVISTA_COLUMNS``), so every later stage is
format-blind:

- ``mathvista``: MathVista's hub parquet layout, its GitHub layout (``testmini.json`` + ``images/`` +
  ``query.json``) and hub ids;
- ``rlinf``: RLinf's geo3k-style rows (prompt with ``<image>``, image lists, ``\\boxed{}`` answers);
- ``sources``: the file readers both share (parquet, JSON, the hub, text that is not UTF-8);
- ``filtering``: the rows fit to train on, every drop counted and named, and the train/eval split;
- ``images``: decoding, resizing and writing each row's image, bad images as counted skips.

How a row becomes a prompt lives in ``core.prompts``; the demo's synthetic set in ``core.demo``.
"""
