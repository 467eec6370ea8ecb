"""`curate embed`: CLIP image and text embeddings of a pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli import scale_options
from curate.cli.app import app


@app.command("embed")
def embed_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory (made by ingest or demo-pool).")],
    model: Annotated[
        str | None,
        typer.Option(
            help="open_clip architecture, e.g. ViT-B-32 or curate-tiny-vit-p4. "
            "Optional with --checkpoint DIR (read from its model_config.json)."
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="open_clip pretrained tag (e.g. laion2b_s34b_b79k; offline, it must already "
            "be in the huggingface cache) or a local weights file (.pt/.bin/.safetensors)."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A curate checkpoint directory (from train-filter) or weights file."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Name of the embedding set (POOL/embeddings/NAME); filters select it by this "
            "name. Default: derived from the model and its weights."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="cpu, or cuda (mixed precision).")] = "cpu",
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="--executor local: image decoding processes (default: cores - 1, at most 8).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing set of that name.")] = False,
    executor: Annotated[
        str,
        typer.Option(
            help="local: this process runs the model, --workers processes decode the images. "
            "ray: one task per shard on a Ray instance (local, or --ray-address), each worker "
            "loading the model once. The vectors are the same bytes either way."
        ),
    ] = "local",
    ray_address: scale_options.RayAddress = None,
) -> None:
    """Embed a pool's images and captions with a CLIP model.

    Writes POOL/embeddings/NAME/: image.npy and text.npy (float16, L2-normalised, row i is
    row i of samples.parquet), clip_score.parquet (uid, clip_score = cosine of image and
    caption; CLIP-score filters read it by set name) and meta.json (the model's identity).
    An interrupted run resumes after its last finished shard when rerun the same way.

    Example: curate embed demo/pool --checkpoint runs/filter-model
    """
    from curate.core.executor import make_executor
    from curate.embed.pool_embeddings import embed_pool

    with make_executor(executor, ray_address=ray_address) as runner:
        report = embed_pool(
            pool,
            arch=model,
            pretrained=pretrained,
            checkpoint=checkpoint,
            name=name,
            batch_size=batch_size,
            device=device,
            workers=workers,
            overwrite=overwrite,
            executor=None if runner.name == "local" else runner,
        )
    earlier = report.shards_total - len(report.shards_computed)
    typer.echo(
        f"embedded {report.rows:,} samples (dim {report.dim}) into {report.path} in "
        f"{report.seconds:.1f}s ({report.images_per_second:,.0f} images/s)"
        + (
            f"; {earlier} of {report.shards_total} shards were done by an earlier run"
            if earlier
            else ""
        )
    )


@app.command("embed-images")
def embed_images_command(
    images: Annotated[
        Path, typer.Argument(help="Image parquet in the Hugging Face layout (image{bytes,path}).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The .npy file to write (float16 rows).")],
    pool: Annotated[
        Path | None,
        typer.Option(help="Use the model that made this pool's embedding set (see --embeddings)."),
    ] = None,
    embeddings: Annotated[
        str | None, typer.Option(help="The pool's embedding set (needed if it has several).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A curate checkpoint directory, instead of --pool.")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="SQL row filter on the parquet, e.g. \"split = 'test'\".")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda.")] = "cpu",
) -> None:
    """Embed another image set with a pool's model, for stages that compare against it.

    image_based needs the downstream task's training images, decontaminate the evaluation
    images, both embedded by the same model as the pool. Example:

      curate embed-images curate/demo/data/cifar10_train.parquet --pool demo/pool
        --out demo/pool/targets/cifar10_train.npy
    """
    from curate.embed.image_sets import embed_image_parquet

    vectors = embed_image_parquet(
        images,
        out,
        pool=pool,
        embeddings=embeddings,
        checkpoint=checkpoint,
        row_filter=where,
        device=device,
    )
    typer.echo(f"wrote {vectors.shape[0]:,} x {vectors.shape[1]} embeddings to {out}")
