"""Filter and dedup stages, registered by name (:mod:`curate.filters.registry`), listed in
:mod:`curate.filters.catalog`.

Adding a stage: write one module in this package that decorates its function with
``@register_stage("name", Params)``, and add its import to ``filters/catalog.py``.
"""
