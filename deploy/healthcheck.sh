#!/bin/bash
# The batchyard image's HEALTHCHECK: GET http://$BATCHYARD_HEALTHCHECK (HOST:PORT/PATH, e.g.
# 127.0.0.1:9090/metrics for a worker, 127.0.0.1:8080/healthz for `serve`) and pass on a 200.
# Bash's /dev/tcp, so the image needs no curl. Unset: nothing serves HTTP (a one-shot `submit`),
# so healthy.
set -u
target="${BATCHYARD_HEALTHCHECK:-}"
[ -n "$target" ] || exit 0
hostport="${target%%/*}"
path="/${target#*/}"
[ "$path" = "/$target" ] && path=/
host="${hostport%:*}"
port="${hostport##*:}"
exec 3<>"/dev/tcp/$host/$port" || { echo "cannot connect to $hostport" >&2; exit 1; }
printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
IFS= read -r -t 5 status <&3 || { echo "no answer from $hostport" >&2; exit 1; }
exec 3<&-
case "$status" in
  "HTTP/"*" 200"*) exit 0 ;;
  *) echo "GET $target: ${status%$'\r'}" >&2; exit 1 ;;
esac
