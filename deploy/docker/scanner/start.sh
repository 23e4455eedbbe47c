#!/bin/sh
# clamd, then clamsmtpd in the foreground. Replies to client addresses go back through
# Portcullis, which connected from them (needs NET_ADMIN in this container).
set -e
ip route replace "${CLIENT_NETWORK:?the clients network, CIDR}" via "${PORTCULLIS_ADDRESS:?Portcullis on this network}"
install -d -o clamav -g clamav /run/clamav
clamd -c /etc/scanner/clamd.conf &
i=0
while [ ! -S /run/clamav/clamd.ctl ]; do
    i=$((i + 1))
    [ $i -lt 600 ] || { echo "scanner: clamd did not start" >&2; exit 1; }
    sleep 0.1
done
exec clamsmtpd -f /etc/scanner/clamsmtpd.conf -d 2
