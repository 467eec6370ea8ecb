"""``near_dedup``: drop samples whose image embedding is a near-duplicate of another's.

Pairs with cosine ≥ ``threshold`` are found by a FAISS range search (exact below
``curate.dedup.knn.FLAT_MAX_ROWS`` rows, IVF above: see that module for the nlist and nprobe
rules); rows linked by pairs, directly or through others, form a group, and each group keeps
one row: the lowest pool row, or the highest CLIP score (ties to the lower row). When the
search is approximate the report gives its recall against the exact search on a seeded
sample of query rows (``recall_sample``): the brute force's pairs, found by searching each
query row against the IVF lists, and the rows in them, that the triangle inequality for
angles cannot rule out (:func:`curate.dedup.ivf_exact.exact_pairs_bounded`; all of them at
worst, the brute force's cost).

The IVF search runs out of core, as tasks on the build's executor
(:mod:`curate.dedup.ivf`): the lists trained on a seeded sample, each block of
``task_rows`` rows assigned to its lists by one task, then one task per group of lists
searching them. No process holds the ``N·d`` vectors; the pairs are the one-index search's.

``index: sharded_flat`` is the exact search in bounded memory (``curate.dedup.sharded``): one
flat index of ``shard_rows`` rows at a time, one task per shard, the rows read in blocks from
the float16 embeddings file instead of one float32 copy of them all; the same pairs, groups
and kept set as ``flat``, in memory ``4·shard_rows·d`` plus the pairs instead of ``8·N·d``.
``flat`` (the default up to 20,000 rows) holds the rows in memory as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from curate.dedup.blocks import TASK_ROWS, Survivors
from curate.dedup.cache import cached_arrays
from curate.dedup.groups import GroupKeep, keep_one_per_group, keep_order, linked_groups
from curate.dedup.ivf import IvfLists, ivf_lists, ivf_pairs
from curate.dedup.ivf_exact import exact_pairs_bounded
from curate.dedup.knn import Pairs, pair_recall, plan_index, self_pairs
from curate.dedup.sharded import SHARD_ROWS, describe_sharded, sharded_pairs_on_executor
from curate.filters.dedup_inputs import (
    clip_scores,
    removal_reasons,
    row_positions,
    rows_file,
    stage_cache_key,
    step_dir,
    survivors,
    task_rows_field,
    use_gpu,
)
from curate.filters.registry import SparseResult, StageContext, StageParams, register_stage


class NearDedupParams(StageParams):
    threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="pairs with image cosine similarity ≥ this are duplicates"
    )
    keep: GroupKeep = Field(
        "lowest_row",
        description="which sample of a group stays: lowest_row (first in the pool) or "
        "highest_clip_score (ties to the lower row)",
    )
    index: Literal["auto", "flat", "ivf", "sharded_flat"] = Field(
        "auto",
        description="auto: exact flat index for small pools, IVF for large ones; sharded_flat: "
        "the exact flat search one shard of rows at a time, in bounded memory",
    )
    shard_rows: int | None = Field(
        None,
        ge=1,
        # left out of the recipe's hash while unset: recipes written before it hash the same
        exclude_if=lambda value: value is None,
        description=f"rows per shard for index: sharded_flat (default {SHARD_ROWS:,}); the "
        "shard's index holds 4·shard_rows·dim bytes",
    )
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists scanned per query (default: curate.dedup.knn's rule)"
    )
    recall_sample: int = Field(
        1000, ge=0, description="query rows checked against the exact search when the index is IVF"
    )
    task_rows: int | None = task_rows_field()

    @model_validator(mode="after")
    def _shard_rows_needs_sharded_index(self) -> NearDedupParams:
        if self.shard_rows is not None and self.index != "sharded_flat":
            raise ValueError("shard_rows applies to index: sharded_flat only")
        return self


def _columns(params: NearDedupParams, available: Sequence[str]) -> list[str]:
    """The uid (reasons name the kept sample); with keep: highest_clip_score, the table's
    clip_score column when it has one (else the embedding set's clip_score.parquet)."""
    wanted = ["uid"]
    if params.keep == "highest_clip_score" and "clip_score" in available:
        wanted.append("clip_score")
    return wanted


@register_stage(
    "near_dedup",
    NearDedupParams,
    needs_embeddings=True,
    columns=_columns,
    columns_on_demand=True,
)
def near_dedup(ctx: StageContext, params: NearDedupParams) -> SparseResult:
    n = ctx.rows.height
    rows = survivors(ctx)
    gpu = use_gpu(ctx)
    searched_lists: Callable[[], IvfLists] | None = None  # an IVF search's lists, for its recall
    if params.index == "sharded_flat":
        shard_rows = params.shard_rows or SHARD_ROWS
        plan_description = describe_sharded(shard_rows)

        def find_pairs() -> Pairs:
            work = step_dir(ctx, "near-sharded", threshold=params.threshold, plan=plan_description)
            return sharded_pairs_on_executor(
                rows,
                rows_file(ctx),
                params.threshold,
                shard_rows,
                work,
                executor=ctx.executor,
                progress=True,
            )
    else:
        plan = plan_index(n, params.index, params.nprobe)
        plan_description = plan.describe()

        ivf_work = step_dir(
            ctx, "near-ivf", threshold=params.threshold, plan=plan_description, gpu=gpu
        )

        def ivf_search_lists() -> IvfLists:  # trained and assigned once, in ivf_work
            return ivf_lists(
                rows,
                plan,
                ivf_work,
                seed=ctx.seed,
                executor=ctx.executor,
                task_rows=params.task_rows or TASK_ROWS,
                gpu=gpu,
                gpus=1 if gpu else 0,
                progress=True,
            )

        def find_pairs() -> Pairs:
            if plan.exact:  # up to FLAT_MAX_ROWS rows unless asked: in memory, 8·N·d bytes
                return self_pairs(rows.block(0, n), params.threshold, plan, progress=True)
            return ivf_pairs(
                rows,
                rows_file(ctx),
                params.threshold,
                ivf_search_lists(),
                ivf_work,
                executor=ctx.executor,
                torch_device="cuda" if gpu else None,
                progress=True,
            )

        searched_lists = None if plan.exact else ivf_search_lists

    def search() -> dict[str, np.ndarray]:
        pairs = find_pairs()
        return {"left": pairs.left, "right": pairs.right, "similarity": pairs.similarity}

    searched_on = {"gpu": True} if gpu and not plan_description["exact"] else {}
    key = stage_cache_key(ctx, threshold=params.threshold, plan=plan_description, **searched_on)
    pairs = Pairs(**cached_arrays(ctx.work_dir, "near-pairs", key, search))

    linked, labels = linked_groups(pairs.left, pairs.right)
    scores = clip_scores(ctx, linked) if params.keep == "highest_clip_score" else None
    order = keep_order(row_positions(ctx)[linked], params.keep, scores)
    linked_kept, representative = keep_one_per_group(labels, order)
    removed = linked[~linked_kept]

    # each linked row's highest cosine in a pair (rows in no pair have none)
    best = np.full(len(linked), -np.inf, dtype=np.float32)
    np.maximum.at(best, np.searchsorted(linked, pairs.left), pairs.similarity)
    np.maximum.at(best, np.searchsorted(linked, pairs.right), pairs.similarity)

    report = {
        **plan_description,
        "threshold": params.threshold,
        "pairs": len(pairs),
        "groups": int(len(np.unique(labels))),
        "rows_in_groups": len(linked),
        "removed": len(removed),
    }
    if searched_lists is not None and params.recall_sample:
        report.update(_recall_report(ctx, rows, pairs, params, searched_lists()))
    return SparseResult(
        rows=n,
        removed=removed,
        reason=removal_reasons(
            ctx,
            linked[representative[~linked_kept]],
            f"near-duplicate group (cosine ≥ {params.threshold} links) kept as uid",
        ),
        scored=linked,
        score=best,
        report=report,
    )


def _recall_report(
    ctx: StageContext, rows: Survivors, pairs: Pairs, params: NearDedupParams, lists: IvfLists
) -> dict:
    """Recall of the found pairs against the exact search from a seeded sample of query rows
    (the brute force's pairs, with the lists and rows that cannot hold one left out:
    :func:`curate.dedup.ivf_exact.exact_pairs_bounded`); ``recall_exact_scanned`` is the share of
    the brute force's products it made."""
    rng = np.random.default_rng(ctx.seed)
    queries = np.sort(
        rng.choice(len(rows), size=min(len(rows), params.recall_sample), replace=False)
    )
    work = step_dir(
        ctx,
        "near-exact",
        threshold=params.threshold,
        recall_sample=params.recall_sample,
        lists=lists.centroids.parent.name,  # the search's work folder, named by its key
    )
    exact, scanned = exact_pairs_bounded(
        rows,
        rows_file(ctx),
        queries,
        params.threshold,
        lists,
        work,
        executor=ctx.executor,
        progress=True,
    )
    return {
        "recall_vs_exact": pair_recall(pairs, exact, queries, len(rows)),
        "recall_query_rows": len(queries),
        "recall_exact_pairs": len(exact),
        "recall_exact_scanned": round(scanned, 6),
    }
