#!/bin/sh
# Container entry point for text2image_hub.
#
# Under HaRP (AppAPI's reverse proxy, Nextcloud 32+) AppAPI sets HP_SHARED_KEY, HP_FRP_ADDRESS and HP_FRP_PORT:
# the app then listens on a unix socket (nc_py_api's run_app does that) and an frp client tunnels HaRP's port
# APP_PORT to that socket. Without HP_SHARED_KEY (docker-install with the Docker Socket Proxy, manual_install) the
# app listens on APP_HOST:APP_PORT and frpc is not started.
#
# The frpc configuration goes to a writable path: the container runs as a non-root user, so "/" is read-only to it.
# TLS for the tunnel is used when HaRP has put its client certificates into /certs/frp. The image ships that folder
# empty and owned by the app user, so it exists either way: look for the files, and give a copy made just after the
# container started a few seconds to land.
set -e

certs_dir="${FRP_CERTS_DIR:-/certs/frp}"

frp_certs_present() {
    [ -s "$certs_dir/client.crt" ] && [ -s "$certs_dir/client.key" ] && [ -s "$certs_dir/ca.crt" ]
}

if [ -n "${HP_SHARED_KEY:-}" ]; then
    frpc_config="${FRPC_CONFIG:-/tmp/frpc.toml}"
    socket="${HP_EXAPP_SOCK:-/tmp/exapp.sock}"
    waited=0
    while [ -d "$certs_dir" ] && ! frp_certs_present && [ "$waited" -lt "${FRP_CERTS_WAIT:-5}" ]; do
        sleep 1
        waited=$((waited + 1))
    done
    umask 077  # the file holds the shared key
    {
        printf 'serverAddr = "%s"\n' "$HP_FRP_ADDRESS"
        printf 'serverPort = %s\n' "$HP_FRP_PORT"
        printf 'loginFailExit = false\n\n'
        if frp_certs_present; then
            echo "start.sh: FRP certificates found in $certs_dir, frpc uses TLS" >&2
            printf 'transport.tls.enable = true\n'
            printf 'transport.tls.certFile = "%s/client.crt"\n' "$certs_dir"
            printf 'transport.tls.keyFile = "%s/client.key"\n' "$certs_dir"
            printf 'transport.tls.trustedCaFile = "%s/ca.crt"\n' "$certs_dir"
            printf 'transport.tls.serverName = "harp.nc"\n\n'
        else
            echo "start.sh: no FRP certificates in $certs_dir, frpc runs without TLS" >&2
            printf 'transport.tls.enable = false\n\n'
        fi
        printf 'metadatas.token = "%s"\n\n' "$HP_SHARED_KEY"
        printf '[[proxies]]\n'
        printf 'remotePort = %s\n' "$APP_PORT"
        printf 'type = "tcp"\n'
        printf 'name = "%s"\n' "$APP_ID"
        printf '[proxies.plugin]\n'
        printf 'type = "unix_domain_socket"\n'
        printf 'unixPath = "%s"\n' "$socket"
    } > "$frpc_config"
    umask 022
    echo "start.sh: HP_SHARED_KEY is set, starting frpc in the background" >&2
    frpc -c "$frpc_config" &
else
    echo "start.sh: HP_SHARED_KEY is not set, no frpc" >&2
fi

exec python3 -m text2image_hub "$@"
