#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and NATS with JetStream (127.0.0.1:4222)
# answer; start them if not.
# With CI=true a server that cannot be started fails the run (tests never skip in CI).
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222 && head -c 4 <&3 | grep -q INFO) 2>/dev/null; }
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 30); do redis_up && break; sleep 1; done
fi
if ! nats_up; then
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ "$(id -u)" -eq 0 ] \
      && command -v apt-get >/dev/null 2>&1; then
    echo "services: installing nats-server (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null || true
  fi
  NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
  if [ -x "$NATS_BIN" ]; then
    echo "services: starting NATS (JetStream)" >&2
    mkdir -p /var/lib/nats-server /var/log 2>/dev/null || true
    if command -v start-stop-daemon >/dev/null 2>&1; then
      start-stop-daemon --start --oknodo --background --exec "$NATS_BIN" -- -a 127.0.0.1 -p 4222 -js \
        -sd /var/lib/nats-server -l /var/log/nats-server.log || true
    else
      nohup "$NATS_BIN" -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log >/dev/null 2>&1 &
    fi
    for _ in $(seq 30); do nats_up && break; sleep 1; done
  fi
fi
status=0
pg_up || { echo "services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; status=1; }
redis_up || { echo "services: Redis is not reachable on 127.0.0.1:6379" >&2; status=1; }
nats_up || { echo "services: NATS is not reachable on 127.0.0.1:4222 (apt-get install nats-server)" >&2; status=1; }
if [ "$status" -ne 0 ] && [ "${CI:-}" = "true" ]; then exit 1; fi
exit 0
