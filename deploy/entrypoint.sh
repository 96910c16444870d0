#!/bin/sh
# The image's entry point: a setting may come from a file (a compose or Kubernetes secret)
# instead of the environment: CHATSERVER_<SECTION>_<KEY>__FILE=/run/secrets/x (two underscores
# before FILE, so it never reads as a setting of its own, such as pool.secret_file) sets
# CHATSERVER_<SECTION>_<KEY> to that file's content, without its last newline. Then it runs the
# command: chatserver run, chatserver compliance run, chatserver migrate, ...
set -eu
for name in $(env | sed -n 's/^\(CHATSERVER_[A-Z0-9_]*[A-Z0-9]\)__FILE=.*/\1/p'); do
    eval "file=\${${name}__FILE}"
    if [ ! -r "$file" ]; then
        echo "chatserver-entrypoint: ${name}__FILE names $file, which cannot be read" >&2
        exit 2
    fi
    value=$(cat "$file")
    export "$name=$value"
    unset "${name}__FILE"
done
exec "$@"
