"""The list of stages: importing each stage module registers it (see :mod:`.registry`).

One import per stage module; add yours here. Everything that looks a stage up by name
(recipes, build-pool) goes through :func:`get_stage` or :data:`STAGES`.
"""

import curate.filters.basic  # noqa: F401
import curate.filters.clip_score  # noqa: F401
import curate.filters.decontaminate  # noqa: F401
import curate.filters.exact_dedup  # noqa: F401
import curate.filters.image_based  # noqa: F401
import curate.filters.laion2b  # noqa: F401
import curate.filters.near_dedup  # noqa: F401
import curate.filters.semdedup  # noqa: F401
import curate.filters.text_based  # noqa: F401
import curate.filters.where  # noqa: F401
from curate.filters.registry import REGISTERED, Stage

# Every registered stage by name: the shipped ones above, plus any a user's code registers.
STAGES: dict[str, Stage] = REGISTERED


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        known = ", ".join(sorted(STAGES))
        raise KeyError(f"unknown stage {name!r}; known stages: {known}") from None
