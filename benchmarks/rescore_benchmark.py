"""How long a reward change costs: the original evaluation (generate + score) versus re-scoring stored completions.

    python benchmarks/rescore_benchmark.py [--profile demo] [--repeats 3]

Builds the profile's data and base model once in a temp folder, then, through ``dagster.materialize`` on one
instance, times side by side in this one run:

* the original evaluation: ``baseline_completions`` + ``baseline_records`` (what a reward change used to cost when
  generation and scoring were one asset);
* the re-score: ``baseline_records`` alone, which reads the stored completions (what "Materialize unsynced" runs
  after a reward edit).

Prints both times, per repeat and as medians, and their ratio (the target is under 10%). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.profiles import get_profile
from vlmrl_pipeline.definitions import all_assets
from vlmrl_pipeline.resources import resources_for_profile

UPSTREAM = ["mathvista_filtered", "resized_images", "base_model"]


def _timed(selection: list[str], resources: dict, instance) -> float:
    start = time.perf_counter()
    result = materialize(all_assets, selection=selection, resources=resources, instance=instance)
    if not result.success:
        raise RuntimeError(f"materializing {selection} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    profile = get_profile(args.profile)
    instance = DagsterInstance.ephemeral()
    with tempfile.TemporaryDirectory() as data_dir:
        resources = resources_for_profile(profile, data_dir)
        print(f"profile {profile.name}: building data and the base model once ...", flush=True)
        _timed(UPSTREAM, resources, instance)
        full, rescore = [], []
        for repeat in range(1, args.repeats + 1):
            full.append(_timed(["baseline_completions", "baseline_records"], resources, instance))
            rescore.append(_timed(["baseline_records"], resources, instance))
            print(f"repeat {repeat}: generate + score {full[-1]:.2f} s, re-score {rescore[-1]:.2f} s", flush=True)
    median_full, median_rescore = statistics.median(full), statistics.median(rescore)
    print(f"\nmedian generate + score: {median_full:.2f} s ({profile.generation.batch_size}-sample batches, "
          f"{profile.data.eval_size} samples, {profile.generation.max_new_tokens} new tokens)")
    print(f"median re-score:         {median_rescore:.2f} s")
    print(f"re-score / original:     {median_rescore / median_full:.3f} (target < 0.10)")


if __name__ == "__main__":
    main()
