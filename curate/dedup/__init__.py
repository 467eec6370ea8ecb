"""Nearest-neighbour search, clustering and grouping for the dedup and image-based stages.

- :mod:`curate.dedup.knn`: FAISS indexes (exact flat or IVF), range search for pairs above a
  cosine threshold, exact nearest neighbours, and the recall of the approximate search.
- :mod:`curate.dedup.clustering`: seeded, deterministic k-means and centroid assignment.
- :mod:`curate.dedup.groups`: connected components of a pair graph; one kept row per group.
- :mod:`curate.dedup.semdedup`: SemDeDup's within-cluster rule (Abbas et al., 2023).
- :mod:`curate.dedup.image_based`: DataComp's image-based filter (Gadre et al., 2023).
- :mod:`curate.dedup.reference`: loading a target or eval set's embeddings from a ``.npy``.
- :mod:`curate.dedup.cache`: results of slow steps kept in a stage's work directory.
- :mod:`curate.dedup.blocks`: a stage's rows as blocks of the float16 embeddings file, read
  without a memory map, and the tasks that work on them (run on an executor, resumable).
- :mod:`curate.dedup.nearest`: each row's nearest centroid or eval image, one task per block.
- :mod:`curate.dedup.ivf`: near_dedup's IVF search out of core (assign, then search per
  group of lists); :mod:`curate.dedup.ivf_exact`: the exact pairs of a sample of query rows
  through the same lists, for its recall; :mod:`curate.dedup.sharded`: the exact search, one
  task per shard.
- :mod:`curate.dedup.device`: FAISS on the CPU or, with ``--device cuda``, faiss-gpu.
- :mod:`curate.dedup.synthetic`: planted near-duplicates for tests and benchmarks.

All vectors are L2-normalised, so inner product = cosine similarity. The filter stages that use
this package live in ``filters/`` (``image_based``, ``exact_dedup``, ``near_dedup``,
``semdedup``, ``decontaminate``).
"""
