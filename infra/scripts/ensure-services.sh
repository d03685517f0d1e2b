#!/usr/bin/env bash
# The scale-out tests start their own PostgreSQL and Redis (tests/fixtures/services.py): make sure
# Debian's server binaries exist. Idempotent and quiet; never starts a system service.
set -u
pg_bin() { ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | head -n 1; }
missing=()
if ! command -v postgres >/dev/null && [ -z "$(pg_bin)" ]; then missing+=(postgresql); fi
if ! command -v redis-server >/dev/null; then missing+=(redis-server); fi
if [ ${#missing[@]} = 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${missing[*]} for the scale-out tests"
  # policy-rc.d 101: install the binaries without starting the system-wide services.
  policy=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$created" = 1 ]; then rm -f "$policy"; fi
else
  echo "warning: ${missing[*]} missing and cannot be installed here; install the Debian" \
       "packages, or the scale-out tests are skipped" >&2
fi
exit 0
