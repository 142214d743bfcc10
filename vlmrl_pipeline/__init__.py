"""vlmrl-pipeline: vision-language RL (GSPO) as a Dagster asset lineage."""
