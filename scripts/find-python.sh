#!/usr/bin/env bash
# Prints the path of a working Python X.Y (X.Y = $1) that can create virtualenvs; exit 1 if none.
#
# Looks at pythonX.Y on PATH first (Debian trixie: apt-get install pythonX.Y pythonX.Y-venv), then
# at pyenv's versions, newest first (pyenv install X.Y). Each candidate must run: a pyenv shim for a
# version that is not active only prints an error, so it is skipped.
set -u
want="${1:?usage: find-python.sh X.Y}"
candidates=()
if p="$(command -v "python$want" 2>/dev/null)"; then
  candidates+=("$p")
fi
root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
while IFS= read -r p; do
  [ -n "$p" ] && candidates+=("$p")
done < <(ls -d "$root"/versions/"$want".*/bin/python"$want" 2>/dev/null | sort -rV)
check="import ensurepip, sys; sys.exit(sys.version_info[:2] != tuple(int(x) for x in '$want'.split('.')))"
for p in ${candidates[@]+"${candidates[@]}"}; do
  if "$p" -c "$check" >/dev/null 2>&1; then
    echo "$p"
    exit 0
  fi
done
exit 1
