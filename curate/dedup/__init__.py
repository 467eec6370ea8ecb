"""Nearest-neighbour search, clustering and grouping for the dedup and image-based stages.

- :mod:`curate.dedup.knn`: FAISS indexes (exact flat or IVF), range search for pairs above a
  cosine threshold, exact nearest neighbours, and the recall of the approximate search.
- :mod:`curate.dedup.clustering`: seeded, deterministic k-means and centroid assignment.
- :mod:`curate.dedup.groups`: connected components of a pair graph; one kept row per group.
- :mod:`curate.dedup.semdedup`: SemDeDup's within-cluster rule (Abbas et al., 2023).
- :mod:`curate.dedup.image_based`: DataComp's image-based filter (Gadre et al., 2023).
- :mod:`curate.dedup.reference`: loading a target or eval set's embeddings from a ``.npy``.
- :mod:`curate.dedup.cache`: results of slow steps kept in a stage's work directory.

All vectors are L2-normalised, so inner product = cosine similarity. The filter stages that use
this package live in ``filters/`` (``image_based``, ``exact_dedup``, ``near_dedup``,
``semdedup``, ``decontaminate``).
"""
