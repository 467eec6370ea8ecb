"""The real img2dataset against a local HTTP server: its output ingested, and `curate download`."""

from __future__ import annotations

import hashlib
import http.server
import threading

import polars as pl
import pytest

from curate.core.errors import UserInputError
from curate.core.manifest import Manifest, produced_by
from curate.core.pool import Pool
from curate.core.uid import make_uid
from curate.ingest import ingest
from curate.ingest.download import DownloadSettings, download
from tests.conftest import make_image_bytes

GOOD, CORRUPT, MISSING = 24, 3, 3


class _Images(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """Serves /good/<i>.jpg (real JPEGs) and /corrupt/<i>.jpg (not images); the rest is 404."""
    files = {f"/good/{i}.jpg": make_image_bytes(1000 + i) for i in range(GOOD)}
    files |= {f"/corrupt/{i}.jpg": b"\xff\xd8 not really a jpeg" for i in range(CORRUPT)}
    handler = type("Handler", (_Images,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def _urls(base):
    return (
        [f"{base}/good/{i}.jpg" for i in range(GOOD)]
        + [f"{base}/corrupt/{i}.jpg" for i in range(CORRUPT)]
        + [f"{base}/missing/{i}.jpg" for i in range(MISSING)]
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_runs_real_img2dataset_and_ingests_its_output(tmp_path, server):
    """`curate download` of a candidate pool made from a metadata-only pool.

    One real img2dataset run (it spawns two processes, each importing torch: ~10 s) covers
    both paths: img2dataset fetching a url+caption parquet from a local server, and the
    img2dataset source ingesting its webdataset output (what `curate ingest DOWNLOADS/`
    does): failed downloads (corrupt bytes, 404) are counted as skips, not ingested.
    """
    base, files = server
    urls = _urls(base)
    metadata = pl.DataFrame(
        {
            "uid": [make_uid("web", u) for u in urls],
            "url": urls,
            "text": [f"text {i}" for i in range(len(urls))],
            "original_width": [32] * len(urls),
            "original_height": [32] * len(urls),
            "clip_b32_similarity_score": [i / 100 for i in range(len(urls))],
        }
    )
    (tmp_path / "meta").mkdir()
    metadata.write_parquet(tmp_path / "meta" / "part0.parquet")
    pool = ingest(tmp_path / "meta", tmp_path / "meta-pool").pool

    # a candidate pool (as build-pool writes it): 2 of every 3 rows, its parent by path
    kept = metadata.filter(pl.int_range(pl.len()) % 3 != 1)
    subset = tmp_path / "candidate"
    subset.mkdir()
    kept.select("uid").sort("uid").write_parquet(subset / "uids.parquet")
    Manifest(
        name="candidate",
        kind="subset",
        source={"pool": str(pool.resolve()), "pool_name": "meta-pool", "recipe": "test"},
        sample_count=kept.height,
        has_images=False,
        produced_by=produced_by("test"),
    ).write(subset)

    settings = DownloadSettings(threads=4, timeout=5, resize_mode="no", samples_per_shard=8)
    result = download(subset, tmp_path / "images", settings=settings)

    good = kept.filter(pl.col("url").str.contains("/good/"))
    failed = kept.height - good.height
    assert 0 < good.height < kept.height and failed >= 2
    stats = result.report["source_stats"]["img2dataset"]
    assert stats["count"] == kept.height and stats["successes"] == good.height
    assert stats["failed_to_download"] + stats["failed_to_resize"] == failed
    assert result.report["skipped_by_reason"] == {"download failed": failed}
    reasons = [e["reason"] for e in result.report["skip_examples"]]
    assert sum("404" in r for r in reasons) == kept["url"].str.contains("/missing/").sum()

    images = Pool.open(tmp_path / "images")
    assert images.manifest.has_images and images.manifest.source["type"] == "download"
    assert len(images.shard_paths()) == -(-good.height // 8)
    samples = images.samples().sort("uid")
    expected = good.sort("uid")
    assert samples["uid"].to_list() == expected["uid"].to_list()  # the original uids
    assert samples["url"].to_list() == expected["url"].to_list()
    assert samples["text"].to_list() == expected["text"].to_list()
    assert samples["clip_b32_similarity_score"].to_list() == (
        expected["clip_b32_similarity_score"].to_list()
    )
    assert samples["sha256"].to_list() == [
        _sha(files[u.removeprefix(base)]) for u in expected["url"]
    ]
    assert not (tmp_path / ".images.download").exists()
    with pytest.raises(UserInputError, match="already has images"):
        download(tmp_path / "images", tmp_path / "again")
