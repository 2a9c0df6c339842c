#!/bin/sh
# The main job on the embedded default: `cseg pretrain` (quickstart recipe, generated data).
set -eu
. "$(dirname "$0")/setup.sh"
exec .venv/bin/cseg pretrain "$@"
