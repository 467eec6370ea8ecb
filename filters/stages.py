"""Imports every stage module so that each registers itself (see filters.registry.get_stage).

One import per stage module; add yours here.
"""

import filters.basic  # noqa: F401
import filters.clip_score  # noqa: F401
import filters.decontaminate  # noqa: F401
import filters.exact_dedup  # noqa: F401
import filters.image_based  # noqa: F401
import filters.laion2b  # noqa: F401
import filters.near_dedup  # noqa: F401
import filters.semdedup  # noqa: F401
import filters.text_based  # noqa: F401
import filters.where  # noqa: F401
