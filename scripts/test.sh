#!/usr/bin/env bash
# Sets up what the test suite talks to, then runs it: the README's test command.
#  - MariaDB on 127.0.0.1:3306 (root, no password): started if it is down
#    (installed from Debian's packages if missing);
#  - Debian's chromium (admin-page browser tests) and nginx (front-proxy tests);
#  - the Python packages of requirements-dev.txt (SDKs, pytest, Playwright).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! mariadb-admin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "starting MariaDB"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 60); do
    mariadb-admin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 && break
    sleep 0.5
  done
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements-dev.txt
exec python3 -m pytest "$@"
