#!/bin/sh
# Fill .device_wheels/ with the few wheels a GPU machine lacks for `cseg bench train`
# (scripts/device_check.sh installs them there; the folder is git-ignored and is carried
# with the working tree). The GPU machines have Python 3.12, PyTorch, torchvision, typer,
# rich, PyYAML, numpy, scipy and matplotlib, and reach no package registry.
# Versions are those of this checkout's .venv (uv.lock); run scripts/setup.sh first.
# The project's own wheel goes to .device_wheels/project/, for a machine whose setuptools
# is too old to install the checkout itself (rebuild it after changing the code).
set -eu
cd "$(dirname "$0")/.."
PACKAGES="pydantic pydantic-core annotated-types typing-inspection webdataset braceexpand"
PY_VERSION=${DEVICE_PYTHON:-3.12}
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 2; }
pins=$(.venv/bin/python -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $PACKAGES)
rm -rf .device_wheels.partial
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device_wheels.partial $pins
UV="$(command -v uv || echo .tools/bin/uv)"
"$UV" build --quiet --wheel --out-dir .device_wheels.partial/project . >&2
rm -rf .device_wheels
mv .device_wheels.partial .device_wheels
echo "wheels for Python $PY_VERSION in .device_wheels/ ($(du -sh .device_wheels | cut -f1)):" >&2
ls -R .device_wheels >&2
