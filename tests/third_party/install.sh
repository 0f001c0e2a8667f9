#!/usr/bin/env bash
# Installs the third-party servers tests/third_party.rs runs actorbot
# against, outside the tracked files: under $CARGO_TARGET_DIR/third-party
# (or target/third-party), node_modules/ from package-lock.json with
# `npm ci` and a Python venv with requirements.txt. Running it again does
# nothing unless the pinned versions changed. Exits non-zero on failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="${CARGO_TARGET_DIR:-$repo/target}/third-party"
mkdir -p "$dest/node"

# telegram-test-api (npm), as the lock file pins it.
node_dir="$dest/node"
if cmp -s "$here/package-lock.json" "$node_dir/node_modules/.installed-lock.json" &&
  [ -d "$node_dir/node_modules/telegram-test-api" ]; then
  echo "telegram-test-api: up to date in $node_dir"
else
  command -v npm >/dev/null || {
    echo "install.sh: npm is not installed" >&2
    exit 1
  }
  cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error
  cp "$here/package-lock.json" "$node_dir/node_modules/.installed-lock.json"
  echo "telegram-test-api: installed in $node_dir"
fi

# fakellm (PyPI), in its own venv.
venv="$dest/venv"
if cmp -s "$here/requirements.txt" "$venv/.installed-requirements.txt" &&
  [ -x "$venv/bin/fakellm" ]; then
  echo "fakellm: up to date in $venv"
else
  command -v python3 >/dev/null || {
    echo "install.sh: python3 is not installed" >&2
    exit 1
  }
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.installed-requirements.txt"
  echo "fakellm: installed in $venv"
fi
