#!/usr/bin/env bash
# Builds RecBole 1.2.1's own virtual environment (default bench/.venv-recbole) from requirements.txt.
# Idempotent: does nothing while the stamp file is newer than requirements.txt; otherwise rebuilds the venv
# from scratch (venv --clear), so nothing stale survives a change of pins. Never touches recfm's .venv.
#   bash bench/recbole/setup.sh            # env: RECBOLE_VENV=DIR, PYTHON=python3.11, TORCH_FIND_LINKS=DIR
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${RECBOLE_VENV:-$(cd "$HERE/.." && pwd)/.venv-recbole}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.recbole-installed"
PY="${PYTHON:-python3}"

if [[ -f "$STAMP" && "$STAMP" -nt "$REQ" && -x "$VENV/bin/python" ]]; then
    echo "recbole venv up to date: $VENV"
    exit 0
fi

"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "setup.sh: needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }

# torch==2.13.0 must be the CPU wheel from a local wheel folder: a plain index install would fetch the
# multi-GB CUDA build. The folder is TORCH_FIND_LINKS, else pip's configured find-links.
WHEELS="${TORCH_FIND_LINKS:-${PIP_FIND_LINKS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true)}}"
TORCH_VERSION="$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$REQ")"
if ! ls "$WHEELS"/torch-"$TORCH_VERSION"*-cp311-*.whl >/dev/null 2>&1; then
    echo "setup.sh: no torch-$TORCH_VERSION cp311 wheel in '$WHEELS' (set TORCH_FIND_LINKS to a folder holding the CPU wheel)" >&2
    exit 1
fi

started=$SECONDS
echo "building $VENV (python: $("$PY" -V 2>&1), torch wheels: $WHEELS)"
rm -f "$STAMP"
"$PY" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --no-deps --no-index --find-links "$WHEELS" "torch==$TORCH_VERSION"
"${PIP[@]}" install --quiet --no-deps --find-links "$WHEELS" -r "$REQ"

# smoke test: the imports sasrec_run.py needs (none of them may pull ray)
(cd "$VENV" && "$VENV/bin/python" - <<'EOF'
import sys
import numpy, torch, recbole
from recbole.config import Config  # noqa: F401
from recbole.data import create_dataset, data_preparation  # noqa: F401
from recbole.model.sequential_recommender import SASRec  # noqa: F401
from recbole.trainer import Trainer  # noqa: F401
assert "ray" not in sys.modules, "recbole imported ray"
assert not torch.version.cuda, f"CUDA torch installed: {torch.version.cuda}"
print(f"recbole {recbole.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")
EOF
)
touch "$STAMP"
echo "done in $((SECONDS - started)) s; $(du -sh "$VENV" | cut -f1) on disk"
