"""The tasks of externally evaluated CLIPs: canonical ids, every spelling of them, test-set sizes.

Canonical ids are DataComp's task keys, which are CLIP_benchmark dataset names (``imagenet1k``,
``imagenetv2``, ``vtab/cifar100``, ...). One alias table maps every spelling seen in the
formats curate imports to the canonical id: the key itself, CLIP_benchmark's webdataset name
(``wds/imagenet1k``) and its file-name slug (``vtab_cifar100``), and DataComp's display name,
which is also the open_clip results table's column header (``ImageNet 1k``).

Sizes, main metrics and display names are DataComp's ``tasklist.yml`` (mlfoundations/datacomp);
the ImageNet family's sizes are also checked against exact integer accuracies in
CLIP_benchmark's ``benchmark.csv`` (e.g. ViT-B-32/openai ImageNet 0.63334 = 31667/50000).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ExternalTask:
    key: str
    """Canonical id: DataComp's tasklist key = CLIP_benchmark's dataset name."""
    name: str
    """DataComp's display name = the open_clip results table's column header."""
    n_test: int | None
    """Test-set size (DataComp's tasklist ``size``)."""
    main_metric: str
    """The metric DataComp scores the task by; ``accuracy`` in the imported table is this."""


IMAGENET_TEST_SIZES: dict[str, int] = {
    "imagenet1k": 50000,
    "imagenetv2": 10000,  # matched-frequency
    "imagenet_sketch": 50889,
    "imagenet-a": 7500,
    "imagenet-r": 30000,
    "objectnet": 18574,  # CLIP_benchmark's 113-class subset
    "imagenet-o": 2000,
}
"""The ImageNet family's test-set sizes (the only tasks an effective-robustness fit uses)."""

IMAGENET_SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet")
"""The testbed's natural shifts (CLIP_benchmark's ``imagenet_robustness`` collection)."""

_ACC1 = "acc1"
_MPCR = "mean_per_class_recall"

TASKS: tuple[ExternalTask, ...] = (
    ExternalTask("imagenet1k", "ImageNet 1k", IMAGENET_TEST_SIZES["imagenet1k"], _ACC1),
    ExternalTask("imagenetv2", "ImageNet v2", IMAGENET_TEST_SIZES["imagenetv2"], _ACC1),
    ExternalTask(
        "imagenet_sketch", "ImageNet Sketch", IMAGENET_TEST_SIZES["imagenet_sketch"], _ACC1
    ),
    ExternalTask("imagenet-a", "ImageNet-A", IMAGENET_TEST_SIZES["imagenet-a"], _ACC1),
    ExternalTask("imagenet-r", "ImageNet-R", IMAGENET_TEST_SIZES["imagenet-r"], _ACC1),
    ExternalTask("objectnet", "ObjectNet", IMAGENET_TEST_SIZES["objectnet"], _ACC1),
    ExternalTask("imagenet-o", "ImageNet-O", IMAGENET_TEST_SIZES["imagenet-o"], _ACC1),
    ExternalTask("vtab/caltech101", "Caltech-101", 6085, _MPCR),
    ExternalTask("cifar10", "CIFAR-10", 10000, _ACC1),
    ExternalTask("vtab/cifar100", "CIFAR-100", 10000, _ACC1),
    ExternalTask("vtab/clevr_count_all", "CLEVR Counts", 15000, _ACC1),
    ExternalTask("vtab/clevr_closest_object_distance", "CLEVR Distance", 15000, _ACC1),
    ExternalTask("country211", "Country211", 21100, _ACC1),
    ExternalTask("vtab/dtd", "Describable Textures", 1880, _ACC1),
    ExternalTask("vtab/eurosat", "EuroSAT", 5400, _ACC1),
    ExternalTask("fgvc_aircraft", "FGVC Aircraft", 3333, _MPCR),
    ExternalTask("food101", "Food-101", 25250, _ACC1),
    ExternalTask("gtsrb", "GTSRB", 12630, _ACC1),
    ExternalTask("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", 711, _ACC1),
    ExternalTask("mnist", "MNIST", 10000, _ACC1),
    ExternalTask("vtab/flowers", "Oxford Flowers-102", 6149, _MPCR),
    ExternalTask("vtab/pets", "Oxford-IIIT Pet", 3669, _MPCR),
    ExternalTask("voc2007", "Pascal VOC 2007", 14976, _ACC1),
    ExternalTask("vtab/pcam", "PatchCamelyon", 32768, _ACC1),
    ExternalTask("renderedsst2", "Rendered SST2", 1821, _ACC1),
    ExternalTask("vtab/resisc45", "RESISC45", 6300, _ACC1),
    ExternalTask("cars", "Stanford Cars", 8041, _ACC1),
    ExternalTask("stl10", "STL-10", 8000, _ACC1),
    ExternalTask("sun397", "SUN397", 108754, _ACC1),
    ExternalTask("vtab/svhn", "SVHN", 26032, _ACC1),
    ExternalTask("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", 1000, "mean_recall@1"),
    ExternalTask(
        "retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", 5000, "mean_recall@1"
    ),
    ExternalTask("misc/winogavil", "WinoGAViL", 3563, "jaccard_score_10-12"),
    ExternalTask("wilds/iwildcam", "iWildCam", 42791, "F1-macro_all"),
    ExternalTask("wilds/camelyon17", "Camelyon17", 85054, _ACC1),
    ExternalTask("wilds/fmow", "FMoW", 22108, "acc_worst_region"),
    ExternalTask("fairness/dollar_street", "Dollar Street", 3503, "acc_top5_wg"),
    ExternalTask("fairness/geode", "GeoDE", 12488, "acc_wg"),
)
"""DataComp's 38 scored tasks, ImageNet family first."""

UNSCORED_TASKS: dict[str, str] = {
    "fairness/fairface": "FairFace",
    "fairness/utkface": "UTKFace",
}
"""Tasks DataComp evaluates but does not score (no main metric): skipped with a count."""

TASK_BY_KEY: dict[str, ExternalTask] = {task.key: task for task in TASKS}

# CLIP_benchmark names its retrieval datasets differently from DataComp's keys.
_EXTRA_ALIASES: dict[str, str] = {
    "flickr30k": "retrieval/flickr_1k_test_image_text_retrieval",
    "mscoco_captions": "retrieval/mscoco_2014_5k_test_image_text_retrieval",
    "imagenet-sketch": "imagenet_sketch",
    "imagenet_v2": "imagenetv2",
    "imagenetv2-matched-frequency": "imagenetv2",
    "imagenet_a": "imagenet-a",
    "imagenet_r": "imagenet-r",
    "imagenet_o": "imagenet-o",
}


def _spellings(key: str, name: str) -> tuple[str, ...]:
    """Every way a task is written in the imported formats."""
    return (
        key,
        f"wds/{key}",  # CLIP_benchmark webdataset name, kept in its JSON's "dataset"
        key.replace("/", "_"),  # CLIP_benchmark's output file-name slug
        key.replace("/", "-"),  # CLIP_benchmark's HF repo slug (wds_vtab-cifar10)
        name,  # DataComp display name = open_clip table column
    )


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    pairs = [(spelling, t.key) for t in TASKS for spelling in _spellings(t.key, t.name)]
    pairs += [(spelling, k) for k, n in UNSCORED_TASKS.items() for spelling in _spellings(k, n)]
    pairs += list(_EXTRA_ALIASES.items())
    for spelling, key in pairs:
        folded = spelling.casefold()
        if aliases.setdefault(folded, key) != key:
            raise AssertionError(f"task alias {spelling!r} names two tasks")
    return aliases


TASK_ALIASES: dict[str, str] = _build_aliases()
"""Case-folded spelling -> canonical task id (scored and unscored tasks)."""


def canonical_task(spelling: str) -> str | None:
    """The canonical id of a task spelling (case-insensitive), or None when unknown."""
    return TASK_ALIASES.get(spelling.strip().casefold())


def close_task_names(spelling: str, n: int = 3) -> list[str]:
    """Canonical ids of the known spellings closest to an unknown one, for an error message."""
    matches = difflib.get_close_matches(spelling.casefold(), TASK_ALIASES, n=3 * n, cutoff=0.6)
    return list(dict.fromkeys(TASK_ALIASES[m] for m in matches))[:n]
