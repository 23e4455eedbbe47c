#!/bin/sh
# Postfix in the foreground as PID 1 (docker stop: SIGTERM to the master, which stops).
set -e
# Only Portcullis may tell Postfix who the client is; everyone else's XCLIENT is refused.
postconf -e "smtpd_authorized_xclient_hosts = ${XCLIENT_HOSTS:?set XCLIENT_HOSTS to the Portcullis address}"
exec postfix start-fg
