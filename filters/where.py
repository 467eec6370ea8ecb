"""``where``: keep the samples for which a SQL boolean expression over samples.parquet's
columns is true (e.g. ``origin != 'cinic10_imagenet'`` or ``width >= 64 AND text IS NOT NULL``).

The expression is evaluated by polars' SQL engine, one vectorised pass; a null result counts
as false. Use it to select a source, a language tag, a size range, anything the table says.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from pydantic import Field

from curate.core.errors import UserInputError
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage


class WhereParams(StageParams):
    keep: str = Field(description="SQL boolean expression over the samples' columns; true keeps")


def _columns(params: WhereParams, available: Sequence[str]) -> list[str]:
    """The columns the expression names (it is checked against them when it runs)."""
    try:
        return list(dict.fromkeys(pl.sql_expr(params.keep).meta.root_names()))
    except Exception as error:  # polars raises several error types for bad SQL
        raise UserInputError(f"where: cannot parse keep = {params.keep!r}: {error}") from None


@register_stage("where", WhereParams, columns=_columns, per_row=True)
def where(ctx: StageContext, params: WhereParams) -> StageResult:
    try:
        mask = ctx.rows.select(pl.sql_expr(params.keep).fill_null(False)).to_series()
    except Exception as error:  # polars raises several error types for bad SQL or columns
        raise UserInputError(
            f"where: cannot evaluate keep = {params.keep!r} over the columns "
            f"{', '.join(ctx.rows.columns)}: {error}"
        ) from None
    if mask.dtype != pl.Boolean:
        raise UserInputError(f"where: keep = {params.keep!r} is {mask.dtype}, not a boolean")
    return StageResult(keep=mask.to_numpy().astype(bool), reason=f"not ({params.keep})")
