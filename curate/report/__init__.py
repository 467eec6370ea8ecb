"""`curate report`: one self-contained HTML page about a folder of pools, candidate pools and
scored results, the page a researcher would publish with them.

The page is assembled from the files earlier steps wrote (manifests, stages.parquet,
decisions.parquet, ground_truth.parquet, results.jsonl) by :mod:`curate.report.build`,
and rendered by :mod:`curate.report.html`; plots and sample images are embedded as data URIs
so the page works when copied alone.
"""
