"""Filter and dedup stages, registered by name. See :mod:`filters.registry`.

Adding a stage: write one module in this package that decorates its function with
``@register_stage("name", Params)``, and add its import to ``filters/stages.py``.
"""

from filters.registry import STAGES, StageContext, StageResult, get_stage, register_stage

__all__ = ["STAGES", "StageContext", "StageResult", "get_stage", "register_stage"]
