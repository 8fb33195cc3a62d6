#!/bin/sh
# Runs one build step (the rest of the command line) with the build host's way to the package index, lent by
# deploy/image/build.sh as build secrets, which are mounted for that step only and never stored in a layer:
#   /run/secrets/ca-bundle  the host's CA bundle (a TLS-inspecting proxy's CA, for instance)
#   /run/secrets/index-env  index and proxy settings as shell assignments (PIP_INDEX_URL, UV_INDEX, ...)
# Without them (a plain `docker build` with a registry and the public index) the step runs as it is.
set -eu
if [ -s /run/secrets/ca-bundle ]; then
    export SSL_CERT_FILE=/run/secrets/ca-bundle PIP_CERT=/run/secrets/ca-bundle \
        REQUESTS_CA_BUNDLE=/run/secrets/ca-bundle
fi
if [ -s /run/secrets/index-env ]; then
    set -a
    . /run/secrets/index-env
    set +a
fi
exec "$@"
