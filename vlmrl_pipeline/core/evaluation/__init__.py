"""The evaluation wing: completions generated, scored, compared and reported.

``generation`` (batched generation through transformers), ``vllm_engine`` (generation through vLLM), ``records``
(per-sample records, their summary, the before/after diff), ``stats`` (paired before/after statistics), ``shipped``
(the shipped artifacts' records against the adapter's), ``plots`` (training curves and before/after bars) and
``report_html`` (the report as one self-contained HTML page).
"""
