#!/bin/sh
# The whole test suite (CI runs this).
set -eu
. "$(dirname "$0")/setup.sh"
exec .venv/bin/pytest "$@"
