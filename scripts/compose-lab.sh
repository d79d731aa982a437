#!/usr/bin/env bash
# The compose lab (docker-compose.yml) in one command.
#
#   scripts/compose-lab.sh up           build the images (scripts/images.sh),
#                                       start everything, wait until every
#                                       service is healthy, print where the
#                                       dashboard and Prometheus are and how
#                                       to use the credentials
#   scripts/compose-lab.sh status       `understudy status` of the group
#                                       from this host, as the operator
#   scripts/compose-lab.sh credentials  copy the operator's credentials out
#                                       of the secrets volume again
#   scripts/compose-lab.sh down         stop and remove the containers, the
#                                       networks and the volumes (secrets and
#                                       data included) and the copied
#                                       credentials
#
# Uses `docker compose` when the plugin is there, else `docker-compose`
# (COMPOSE overrides: COMPOSE="docker-compose"). The project is
# COMPOSE_PROJECT_NAME [understudy]; the other settings are the variables
# listed at the top of docker-compose.yml. The operator's files land in
# .compose-lab/<project>/ (owner-only). UNDERSTUDY_COMPOSE_TIMEOUT: how
# long `up` waits for health, in seconds [300].
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd -P)"

project="${COMPOSE_PROJECT_NAME:-understudy}"
export COMPOSE_PROJECT_NAME="$project"
state="$repo/.compose-lab/$project"
timeout="${UNDERSTUDY_COMPOSE_TIMEOUT:-300}"
# The static binary the device image holds (scripts/images.sh puts it here).
understudy="$repo/deploy/docker/understudy/bin/understudy"
publish="${UNDERSTUDY_PUBLISH:-127.0.0.1}"
nats_ports=("${UNDERSTUDY_NATS_PORT_1:-4222}" "${UNDERSTUDY_NATS_PORT_2:-4223}" "${UNDERSTUDY_NATS_PORT_3:-4224}")
gateway_port="${UNDERSTUDY_GATEWAY_PORT:-8080}"
prometheus_port="${UNDERSTUDY_PROMETHEUS_PORT:-9090}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then
    COMPOSE="docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE="docker-compose"
  else
    die "neither \`docker compose\` nor \`docker-compose\` is installed (Debian: apt-get install docker-compose)"
  fi
fi
compose() { $COMPOSE --project-name "$project" --file "$repo/docker-compose.yml" "$@"; }

# The id of service $1's container in this project (stopped ones too).
container() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}

# Copies the operator's credentials out of the secrets volume (through the
# stopped one-shot `secrets` container) and writes operator.env.
credentials() {
  local secrets nats_urls="" p
  secrets="$(container secrets)"
  [ -n "$secrets" ] || die "project $project has no secrets container: run \`$0 up\` first"
  (umask 077 && mkdir -p "$state")
  for f in ca.pem nats-password-gateway project-token api-token read-tokens; do
    docker cp "$secrets:/secrets/$f" "$state/$f"
    chmod 0600 "$state/$f"
  done
  for p in "${nats_ports[@]}"; do nats_urls="${nats_urls:+$nats_urls,}tls://$publish:$p"; done
  (
    umask 077
    cat >"$state/operator.env" <<ENV
# The compose lab's operator (NATS user \`gateway\`) for understudy's CLI on this host:
#   source $state/operator.env
export UNDERSTUDY_NATS='$nats_urls'
export UNDERSTUDY_NATS_USER=gateway
export UNDERSTUDY_NATS_PASSWORD_FILE='$state/nats-password-gateway'
export UNDERSTUDY_NATS_TLS_CA='$state/ca.pem'
export UNDERSTUDY_PROJECT_TLS_CA='$state/ca.pem'
export UNDERSTUDY_PROJECT_TOKEN_FILE='$state/project-token'
export UNDERSTUDY_GROUP=lab
ENV
  )
}

# Waits until every service with a health check is healthy and the others
# run; fails naming the laggards after $timeout seconds.
wait_healthy() {
  local start="$1" deadline=$(( $1 + timeout )) waiting id name status
  while :; do
    waiting=""
    for id in $(docker ps -aq --filter "label=com.docker.compose.project=$project"); do
      name="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")"
      [ "$name" = "secrets" ] && continue
      status="$(docker inspect -f '{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}' "$id")"
      case "$status" in
        running | running/healthy) ;;
        *) waiting="$waiting $name($status)" ;;
      esac
    done
    [ -z "$waiting" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      compose ps || true
      die "not healthy after ${timeout}s:$waiting (logs: $COMPOSE --project-name $project logs)"
    fi
    sleep 1
  done
}

up() {
  local start built up_at
  start="$(date +%s)"
  scripts/images.sh
  built="$(date +%s)"
  # v1 uses the images just built (it has no pull policy and would build
  # only a missing one); v2 follows `pull_policy: build`, a cached build.
  local no_build=()
  case "$($COMPOSE version --short 2>/dev/null || true)" in
    1.*) no_build=(--no-build) ;;
  esac
  say "$COMPOSE up -d (project $project)"
  up_at="$(date +%s)"
  compose up -d "${no_build[@]}"
  say "waiting for every service to be healthy (at most ${timeout}s)"
  wait_healthy "$up_at"
  credentials
  local now
  now="$(date +%s)"
  say "the lab is up and healthy, $((now - start))s after \`$0 up\` started (images $((built - start))s, up to healthy $((now - up_at))s)"
  cat <<INFO

  dashboard   http://$publish:$gateway_port/?group=lab
              admin token:     $state/api-token
              read-only token: $state/read-tokens (the dashboard asks for one)
  API         curl -H "Authorization: Bearer \$(cat $state/api-token)" http://$publish:$gateway_port/api/v1/groups
  Prometheus  http://$publish:$prometheus_port  (targets: http://$publish:$prometheus_port/targets)
  NATS        tls://$publish:${nats_ports[0]}, :${nats_ports[1]}, :${nats_ports[2]} (CA $state/ca.pem)

  as the operator on this host:
    source $state/operator.env
    $understudy status
    $understudy events
  fail over:  docker kill \$(docker ps -q --filter label=com.docker.compose.project=$project --filter label=com.docker.compose.service=device-1)
  tear down:  $0 down
INFO
}

down() {
  say "$COMPOSE down: containers, networks and volumes of project $project"
  compose down --volumes --remove-orphans --timeout 5
  rm -rf "$state"
}

status() {
  [ -f "$state/operator.env" ] || credentials
  # shellcheck disable=SC1091
  source "$state/operator.env"
  [ -x "$understudy" ] || die "$understudy is missing: run scripts/images.sh"
  "$understudy" status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  credentials) credentials && say "credentials in $state (source $state/operator.env)" ;;
  *) die "usage: $0 up|status|credentials|down" ;;
esac
