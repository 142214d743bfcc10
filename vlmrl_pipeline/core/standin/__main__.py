"""``python -m vlmrl_pipeline.core.standin``: the ``vlmrl-standin`` command."""

from vlmrl_pipeline.core.standin.build import main

if __name__ == "__main__":
    main()
