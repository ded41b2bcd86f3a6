#!/bin/sh
# Prints the Python that `make` builds the virtual environment with: python3.12, else
# python3.13, whichever runs first (Django 6, for offload[django], needs 3.12 or newer),
# found on the PATH or among pyenv's installed versions; otherwise plain python3.
for v in 3.12 3.13; do
  if command -v "python$v" >/dev/null 2>&1 && "python$v" -c '' >/dev/null 2>&1; then
    command -v "python$v"; exit 0
  fi
  if command -v pyenv >/dev/null 2>&1; then
    found=$(pyenv versions --bare 2>/dev/null | grep -E "^$v\.[0-9]+$" | sort -t. -k3 -n | tail -1)
    if [ -n "$found" ]; then
      PYENV_VERSION=$found pyenv which python3 2>/dev/null && exit 0
    fi
  fi
done
echo python3
