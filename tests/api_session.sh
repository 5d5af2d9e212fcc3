#!/usr/bin/env bash
# The API as a new user drives it, with curl only (and grep/sed to read
# the answers): upload the packed connector, add an environment, link a
# source, provision a VDB, poll its job, connect to it, delete it.
#
# Needs: PGVIRT_URL, PGVIRT_TOKEN, CONNECTOR_DIR (made by `pgvirt connector
# pack`), SOURCE_DATA_DIR (the cluster to link), STAGING_PORT.
set -euo pipefail
auth=(-H "Authorization: Bearer $PGVIRT_TOKEN")

# call METHOD PATH [BODY]: prints the body; fails on a status >= 400.
call() {
    local out status
    out=$(curl -sS -X "$1" "${auth[@]}" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} -w '\n%{http_code}' "$PGVIRT_URL$2")
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    if [ "$status" -ge 400 ]; then
        echo "$1 $2 -> $status: $out" >&2
        return 1
    fi
    printf '%s' "$out"
}

# wait_job JOB_JSON: polls the job until it ends; fails unless it succeeded.
wait_job() {
    local id state job
    id=$(printf '%s' "$1" | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2)
    while :; do
        job=$(call GET "/jobs/$id")
        state=$(printf '%s' "$job" | grep -o '"state":"[a-z]*"' | head -1 | cut -d'"' -f4)
        [ "$state" = running ] || break
        sleep 0.5
    done
    echo "job $id: $state" >&2
    [ "$state" = succeeded ] || { echo "$job" >&2; return 1; }
    printf '%s' "$job"
}

# 1. Upload the connector: the one self-contained file `pgvirt connector
#    pack` wrote (a file, not an argument: it carries the library).
curl -sSf -X POST "${auth[@]}" -H 'Content-Type: application/json' \
    --data-binary "@$CONNECTOR_DIR/connector.json" "$PGVIRT_URL/connectors" >/dev/null

# 2. This host as an environment; discover its clusters.
call POST /environments '{"kind": "local", "user": "postgres"}' >/dev/null
found=$(call POST /environments/local/refresh)
source_id=$(printf '%s' "$found" | sed 's/{"document":/\n{"document":/g' \
    | grep "\"data_directory\":\"$SOURCE_DATA_DIR\"" | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2)
echo "source config $source_id" >&2

# 3. Link it (a job), then provision a VDB from it (a job).
job=$(call POST /dsources "{\"name\": \"api-src\", \"source_config\": $source_id,
    \"parameters\": {\"staging_port\": $STAGING_PORT}}")
wait_job "$job" >/dev/null
job=$(call POST /vdbs '{"name": "api-vdb", "from": "api-src"}')
wait_job "$job" >/dev/null

# 4. Connect to it.
vdb=$(call GET /vdbs/api-vdb)
port=$(printf '%s' "$vdb" | grep -o '"port":[0-9]*' | head -1 | cut -d: -f2)
socket=$(printf '%s' "$vdb" | grep -o '"socket_directory":"[^"]*"' | head -1 | cut -d'"' -f4)
answer=$(su postgres -c "psql -X -A -t -h '$socket' -p '$port' -d postgres -c 'SELECT 40 + 2'")
[ "$answer" = 42 ] || { echo "the VDB answered $answer" >&2; exit 1; }

# 5. Delete it (a job); it is gone.
job=$(call DELETE /vdbs/api-vdb)
wait_job "$job" >/dev/null
if call GET /vdbs/api-vdb >/dev/null 2>&1; then
    echo "VDB api-vdb is still there" >&2
    exit 1
fi
echo "session done"
