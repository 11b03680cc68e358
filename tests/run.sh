#!/usr/bin/env bash
# The test command (README, .ci/run): the whole suite on the Ray this environment installed
# (pyproject's newest match), then the tests marked `oldest_ray` (how flops_fit drives Ray:
# the Tune trial -> TorchTrainer pattern, checkpoints, resume, a lost node, a diverged point
# as data, Train's cleanup of a dead trial driver) on the oldest supported Ray, in a second
# virtual environment beside the first (.venv-ray-oldest), so both ends of the supported
# range are tested. Extra arguments go to both pytest runs. Each run ends with its 15
# slowest tests (where the time went).
set -euo pipefail
cd "$(dirname "$0")/.."
OLDEST_RAY="2.53.0"  # the lower bound of ray in pyproject.toml (>=2.53)

# The second environment is installed while the first pass runs: pip mostly waits on the
# disk and the registry, and the first pass starts with tests that keep one core busy.
install_log=$(mktemp "${TMPDIR:-/tmp}/flops_fit-ray-${OLDEST_RAY}-install.XXXXXX")
(
    [ -x .venv-ray-oldest/bin/python ] || python3 -m venv .venv-ray-oldest
    .venv-ray-oldest/bin/pip install -q torch==2.13.0
    .venv-ray-oldest/bin/pip install -q -e ".[dev]" "ray[default,train,tune]==${OLDEST_RAY}"
) >"$install_log" 2>&1 &
installer=$!
# On an early exit, stop the installer and the pip it runs (pip would go on as an orphan).
trap 'pkill -P "$installer" 2>/dev/null; kill "$installer" 2>/dev/null || true' EXIT

echo "== tests on ray $(python -c 'import ray; print(ray.__version__)') (all)"
python -m pytest --durations=15 "$@"

if ! wait "$installer"; then
    cat "$install_log"
    echo "installing Ray ${OLDEST_RAY} into .venv-ray-oldest failed (output above)" >&2
    exit 1
fi
trap - EXIT
echo "== tests on ray $(.venv-ray-oldest/bin/python -c 'import ray; print(ray.__version__)') (marked oldest_ray)"
.venv-ray-oldest/bin/python -m pytest --durations=15 -m oldest_ray "$@"
