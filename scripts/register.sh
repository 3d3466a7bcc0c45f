#!/bin/sh
# Register (or unregister) a text2image_hub process that is already running with a Nextcloud, through AppAPI's
# manual_install deploy daemon: Nextcloud then calls the app at http://<DAEMON_HOST>:<APP_PORT>.
#
#   APP_SECRET=… APP_PORT=9033 scripts/register.sh            # register (replaces an earlier registration)
#   scripts/register.sh unregister
#
# Environment:
#   OCC            the occ command (default "php occ"); e.g. "docker exec -u www-data nextcloud php occ"
#   APP_SECRET     the secret the app was started with (required to register)
#   APP_PORT       the port the app listens on (default 9033)
#   APP_HOST       the address the app listens on (default 127.0.0.1)
#   DAEMON_HOST    the app's host as Nextcloud reaches it (default APP_HOST; 0.0.0.0 becomes 127.0.0.1)
#   NEXTCLOUD_URL  Nextcloud's URL as the app reaches it (default http://127.0.0.1:8080)
#   DAEMON_NAME    the deploy daemon's name (default manual_install)
#   INFO_XML       the manifest (default appinfo/info.xml next to this script)
#   PYTHON         a Python 3 interpreter to read info.xml (default python3)
#
# The JSON given to `occ app_api:app:register --json-info` carries the keys of a real registration (recorded from
# Nextcloud 34): id, name, daemon_config_name, version, secret, port, routes.
set -eu

OCC="${OCC:-php occ}"
APP_PORT="${APP_PORT:-9033}"
APP_HOST="${APP_HOST:-127.0.0.1}"
NEXTCLOUD_URL="${NEXTCLOUD_URL:-http://127.0.0.1:8080}"
DAEMON_NAME="${DAEMON_NAME:-manual_install}"
PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "$0")" && pwd)"
INFO_XML="${INFO_XML:-$here/../appinfo/info.xml}"

case "$APP_HOST" in
    0.0.0.0 | "::" | "") default_daemon_host=127.0.0.1 ;;
    *) default_daemon_host="$APP_HOST" ;;
esac
DAEMON_HOST="${DAEMON_HOST:-$default_daemon_host}"

# Prints the --json-info document for info.xml, the daemon name, the secret and the port given as arguments.
json_info() {
    "$PYTHON" - "$INFO_XML" "$DAEMON_NAME" "$1" "$2" <<'PY'
import json
import sys
import xml.etree.ElementTree as ET

info_xml, daemon, secret, port = sys.argv[1:5]
root = ET.parse(info_xml).getroot()
levels = {"PUBLIC": 0, "USER": 1, "ADMIN": 2}
routes = [
    {
        "url": route.findtext("url", ""),
        "verb": route.findtext("verb", ""),
        "access_level": levels[route.findtext("access_level", "").strip().upper()],
        "headers_to_exclude": json.loads(route.findtext("headers_to_exclude") or "[]"),
    }
    for route in root.iterfind("external-app/routes/route")
]
print(json.dumps({
    "id": root.findtext("id"),
    "name": root.findtext("name"),
    "daemon_config_name": daemon,
    "version": root.findtext("version"),
    "secret": secret,
    "port": int(port),
    "routes": routes,
}))
PY
}

app_id() {
    "$PYTHON" -c 'import sys, xml.etree.ElementTree as ET; print(ET.parse(sys.argv[1]).getroot().findtext("id"))' \
        "$INFO_XML"
}

unregister() {
    # --silent: succeeds when the app is not registered; --force: goes on when the app does not answer /enabled.
    # shellcheck disable=SC2086 # OCC is a command line and is split on purpose
    $OCC app_api:app:unregister "$1" --silent --force
}

command="${1:-register}"
appid="$(app_id)"
case "$command" in
    register)
        if [ -z "${APP_SECRET:-}" ]; then
            echo "register.sh: set APP_SECRET to the secret the app was started with" >&2
            exit 2
        fi
        case "$APP_PORT" in
            '' | *[!0-9]*) echo "register.sh: APP_PORT must be a number, not '$APP_PORT'" >&2; exit 2 ;;
        esac
        info="$(json_info "$APP_SECRET" "$APP_PORT")"
        # Skips (exit 0) when a daemon of that name exists already.
        # shellcheck disable=SC2086
        $OCC app_api:daemon:register "$DAEMON_NAME" "Manual Install" manual-install http "$DAEMON_HOST" "$NEXTCLOUD_URL"
        unregister "$appid"
        # shellcheck disable=SC2086
        $OCC app_api:app:register "$appid" "$DAEMON_NAME" --json-info "$info" --wait-finish
        ;;
    unregister)
        unregister "$appid"
        ;;
    *)
        echo "usage: $0 [register|unregister]" >&2
        exit 2
        ;;
esac
