#!/bin/bash
# The image's entrypoint: NGC's own (banner, driver and CUDA-compatibility checks, shm warning), then
# normtrain. NGC's script prints its banner on stdout and then execs its arguments; here it runs with
# stdout on stderr and normtrain gets the original stdout back, so that stdout is normtrain's alone
# (`docker run ... normtrain runs --csv > runs.csv` stays a CSV).
NGC_ENTRYPOINT="${NGC_ENTRYPOINT:-/opt/nvidia/nvidia_entrypoint.sh}"
NORMTRAIN="${NORMTRAIN:-normtrain}"
if [[ ! -x "$NGC_ENTRYPOINT" ]]; then  # another base image: nothing to wrap
  exec "$NORMTRAIN" "$@"
fi
exec 3>&1 1>&2
exec "$NGC_ENTRYPOINT" /bin/bash -c 'exec "$0" "$@" 1>&3 3>&-' "$NORMTRAIN" "$@"
