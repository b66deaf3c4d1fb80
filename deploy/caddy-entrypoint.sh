#!/bin/sh
# Entrypoint of the compose file's caddy service (profile https). Before Caddy puts WADM on the
# internet it checks that WADM_DOMAIN is set and that WADM itself requires API keys, then runs its
# arguments (Caddy). Otherwise it says why and exits 1: nothing is served on 80 or 443.
#
# It waits until WADM answers GET /health (200 or 503: starting or degraded are fine), then asks
# GET /api/v1/symbols without a key: WADM with keys answers 401, whichever of WADM_API_KEYS and
# WADM_API_KEYS_FILE set them. It needs only a POSIX shell and nc (BusyBox in the caddy image).
#
# WADM_UPSTREAM (host:port, default wadm:8920) is where WADM answers, as in deploy/Caddyfile;
# WADM_WAIT (seconds, default 120) is how long to wait for it to answer at all.
set -eu

upstream="${WADM_UPSTREAM:-wadm:8920}"
wait_s="${WADM_WAIT:-120}"

refuse() {
    echo "wadm-https: refusing to start: $*" >&2
    exit 1
}

case "${WADM_DOMAIN:-}" in
    "")
        refuse "WADM_DOMAIN is not set. Put the DNS name whose A record points at this machine in .env" \
            "(WADM_DOMAIN=wadm.example.com): Caddy gets the certificate for that name." ;;
    *[!A-Za-z0-9.-]* | .* | *. | *..* | -* )
        refuse "WADM_DOMAIN=$WADM_DOMAIN is not a DNS name (letters, digits, dots and hyphens, e.g. wadm.example.com)." ;;
esac

host="${upstream%:*}"
port="${upstream##*:}"

# GET a path over plain HTTP/1.0; WADM closes the connection after its answer. nc's input stays
# open until then: WADM (Granian) drops a request whose client has already shut its sending side.
get() {
    { printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$host"; sleep 2; } | nc -w 5 "$host" "$port" 2>/dev/null
}

start="$(date +%s)"
while :; do
    answer="$(get /health || true)"
    case "$answer" in
        HTTP/*) break ;;
    esac
    if [ $(($(date +%s) - start)) -ge "$wait_s" ]; then
        refuse "WADM did not answer GET http://$upstream/health within $wait_s s (docker compose logs wadm)."
    fi
    sleep 1
done

answer="$(get /api/v1/symbols || true)"
status="$(printf '%s' "$answer" | head -n 1 | tr -d '\r')"
case "$status" in
    "HTTP/"*" 401" | "HTTP/"*" 401 "*)
        echo "wadm-https: WADM at $upstream requires API keys; serving it as https://$WADM_DOMAIN" >&2 ;;
    "HTTP/"*)
        refuse "WADM at $upstream answers without API keys (GET /api/v1/symbols without a key: $status):" \
            "over HTTPS anyone could read it. Set WADM_API_KEYS (or WADM_API_KEYS_FILE) for the wadm" \
            "service in .env (README, \"API keys\"), then run docker compose --profile https up -d again." ;;
    *)
        refuse "GET http://$upstream/api/v1/symbols got no HTTP answer: ${status:-nothing}" ;;
esac

if [ "$#" -eq 0 ]; then
    set -- caddy run --config /etc/caddy/Caddyfile --adapter caddyfile
fi
exec "$@"
