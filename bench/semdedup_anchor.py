"""Run facebookresearch/SemDeDup's own code on a bench pool: the anchor of curate's
``semdedup`` stage, called by ``bench/bench_faiss_stages.py`` as a whole process.

Its code is extracted at run time from a git directory (``--repo``, never copied into this
project) and run unmodified, in the order of its README, over the inputs the bench prepared
under ``--inputs`` (the pool's embeddings as its float32 memmap, the uids as its ``S32`` paths
memmap, and the k-means index of curate's seeded spherical k-means as its
``kmeans_index.pickle``, so that both tools share the clusters and differ only in the rule):

1. ``clustering/clustering.py`` ``compute_centroids`` with ``Kmeans_with_cos_dist=True`` (its
   default config): the index is loaded, not trained; each row's nearest centroid and
   inner product;
2. ``clustering/sort_clusters.py`` ``assign_and_sort_clusters`` (``sim_metric: cosine``,
   ``keep_hard: True``): each cluster's members ranked by distance to the centroid;
3. ``semdedup.py`` ``SemDeDupJob._process_shard``: per cluster, ``M`` and the removal table for
   ``--eps``, keeping ``--which-to-keep`` examples (``easy``: its ranking reversed).
   Upstream, the method raises after saving each non-singleton cluster's table
   (``step_time.append_cluster``) and after the loop when every cluster was a singleton
   (division by an empty list), so it is called one cluster at a time and those two errors
   are accepted once the table exists;
4. ``extract_dedup_data.py`` ``extract_pruned_data``: the kept uids, one per line.

Its imports of ``submitit`` (for SLURM) are stubbed: nothing here submits jobs. A cluster
with no member (possible with centroids trained on a sample) has no table in upstream's
design (its k-means trains on every row); this script writes an empty one and counts it
(``--out`` with the suffix ``.json``).

    python bench/semdedup_anchor.py --repo DIR --inputs DIR --rows N --dim D --clusters K \
        --eps 0.05 --out kept.txt
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

STUB_SUBMITIT = "class helpers:\n    class Checkpointable:\n        pass\n"
UPSTREAM_BUGS = (
    "'list' object has no attribute 'append_cluster'",
    "division by zero",
)


def extract(repo: Path, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "stubs").mkdir()
    (into / "stubs" / "submitit.py").write_text(STUB_SUBMITIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="git directory of SemDeDup")
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--clusters", type=int, required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--which-to-keep", choices=("hard", "easy"), default="hard")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    checkout = Path(tempfile.mkdtemp(prefix="semdedup_anchor_", dir=args.inputs))
    extract(args.repo, checkout)
    sys.path[:0] = [str(checkout / "stubs"), str(checkout / "clustering"), str(checkout)]
    import numpy as np
    import pandas as pd
    from clustering import compute_centroids
    from extract_dedup_data import extract_pruned_data
    from semdedup import SemDeDupJob
    from sort_clusters import assign_and_sort_clusters

    logger = logging.getLogger("semdedup_anchor")
    logging.basicConfig(level=logging.INFO)
    save_folder = args.inputs / "clustering"
    sorted_clusters = checkout / "sorted_clusters"
    data = np.memmap(args.inputs / "embs.f32", np.float32, "r", shape=(args.rows, args.dim))
    paths = np.memmap(args.inputs / "paths.S32", "S32", "r", shape=(args.rows,))

    compute_centroids(
        data, args.clusters, Kmeans_with_cos_dist=True, save_folder=str(save_folder),
        logger=logger, verbose=False,
    )  # fmt: skip
    assign_and_sort_clusters(
        data, paths, "cosine", True, True, str(save_folder), str(sorted_clusters),
        range(args.clusters), logger,
    )  # fmt: skip

    tables = checkout / "dataframes"
    tables.mkdir()
    job = SemDeDupJob(
        argparse.Namespace(
            embs_memory_loc=str(args.inputs / "embs.f32"), dataset_size=args.rows,
            emd_size=args.dim, save_loc=str(checkout), sorted_clusters_path=str(sorted_clusters),
            eps_list=[args.eps], which_to_keep=args.which_to_keep, seed=1234, device="cpu",
        ),
        0,
    )  # fmt: skip
    empty = 0
    for cluster in range(args.clusters):
        table = tables / f"cluster_{cluster}.pkl"
        if np.load(sorted_clusters / f"cluster_{cluster}.npy").size == 0:
            empty += 1
            with open(table, "wb") as handle:
                pickle.dump(pd.DataFrame({"indices": [], f"eps={args.eps}": []}), handle)
            continue
        try:
            job._process_shard(cluster, cluster + 1)
        except (AttributeError, ZeroDivisionError) as error:
            if str(error) not in UPSTREAM_BUGS or not table.is_file():
                raise
    extract_pruned_data(
        str(sorted_clusters), str(tables), args.eps, args.clusters, str(args.out),
        retreive_kept_samples=True,
    )  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps({"empty_clusters": empty}))


if __name__ == "__main__":
    main()
