#!/usr/bin/env bash
# What a user gets from `pip install curate`: build the wheel and sdist, check their metadata,
# install the wheel (not editable) into a fresh venv with the pinned constraints, and run the
# main commands from a directory outside the checkout. Used by .ci/run; runs alone too:
#   bash scripts/wheel_smoke.sh [WORK_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
export NO_ALBUMENTATIONS_UPDATE=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1

echo "+ build the sdist, and the wheel from it, into $work/dist"
python -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
python -m twine check --strict "$work"/dist/*

wheel=$(ls "$work"/dist/curate-*.whl)
echo "+ the wheel's top level holds curate alone"
python - "$wheel" <<'PY'
import sys, zipfile
tops = {name.split("/")[0] for name in zipfile.ZipFile(sys.argv[1]).namelist()}
extra = sorted(t for t in tops if t != "curate" and not t.endswith(".dist-info"))
assert not extra, f"the wheel installs top-level names besides curate: {extra}"
print("top level:", sorted(tops))
PY

echo "+ fresh venv, wheel installed with the constraints"
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$wheel" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }

cd "$work"  # outside the checkout: nothing can come from the repository's folders
run() { echo "+ $*"; "$@"; }
run "$work/venv/bin/python" - <<'PY'
import importlib.util
import curate
assert "site-packages" in curate.__file__, curate.__file__
for name in ("eval", "cli", "filters", "recipes"):
    spec = importlib.util.find_spec(name)
    assert spec is None, f"`import {name}` resolves to {spec.origin}: only curate may be importable"
print("curate from", curate.__file__)
PY
curate_cli="$work/venv/bin/curate"
run "$curate_cli" recipes >/dev/null
for recipe in $("$work/venv/bin/python" -c \
    "from curate.build_pool.recipe import shipped_recipes; print(*shipped_recipes())"); do
  "$curate_cli" validate-recipe "$recipe"
done
run "$curate_cli" demo --profile smoke --out "$work/demo" >"$work/demo.log" || { tail -40 "$work/demo.log"; exit 1; }
run "$curate_cli" sql "$work/demo/pool" "SELECT count(*) AS samples FROM samples"
echo "wheel smoke test passed"
