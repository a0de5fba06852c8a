#!/bin/sh
# Keyless's GIT_ASKPASS inside a shell sandbox. git asks it for the username
# and the password of an HTTPS remote; it answers from the command's own
# variables: KEYLESS_GIT_PASSWORD holds a cap_ handle (never a secret), which
# the egress proxy swaps for the secret on an in-scope request.
case "$1" in
    Username*) printf '%s\n' "${KEYLESS_GIT_USERNAME:-x-access-token}" ;;
    *) printf '%s\n' "${KEYLESS_GIT_PASSWORD:-}" ;;
esac
