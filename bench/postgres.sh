# Sourced by the benchmarks that run on PostgreSQL: a private server on a
# unix socket in $WORK/pg, durable (fsync on) but with synchronous_commit
# off — like the SQLite store's WAL with synchronous=NORMAL, a power cut may
# lose the last commits, never consistency.
#
# start_postgres LOGFILE DB... starts it (initdb refuses root: it runs as
# nobody), creates the databases and sets PGBIN, PGPID (its process group)
# and PGHOST_DIR. stop_postgres ends the whole group.

start_postgres() {
	local log=$1
	shift
	PGBIN=$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
	[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL is not installed: scripts/install-deps.sh installs postgresql-15" >&2; exit 1; }
	PGHOST_DIR=$WORK/pg
	local as=()
	[ "$(id -u)" -ne 0 ] || as=(runuser -u nobody --)
	mkdir -p "$PGHOST_DIR"
	[ "$(id -u)" -ne 0 ] || chown nobody "$PGHOST_DIR"
	chmod 755 "$WORK"
	(cd "$PGHOST_DIR" && "${as[@]}" "$PGBIN/initdb" -D "$PGHOST_DIR/data" -U postgres -A trust -E UTF8 --locale=C >"$PGHOST_DIR/initdb.log" 2>&1) ||
		{ cat "$PGHOST_DIR/initdb.log" >&2; exit 1; }
	(cd "$PGHOST_DIR" && exec setsid "${as[@]}" "$PGBIN/postgres" -D "$PGHOST_DIR/data" -k "$PGHOST_DIR" -c listen_addresses= \
		-c synchronous_commit=off -c max_connections=100 >"$log" 2>&1) &
	PGPID=$!
	for _ in $(seq 300); do "$PGBIN/pg_isready" -q -h "$PGHOST_DIR" -U postgres && break; sleep 0.1; done
	"$PGBIN/pg_isready" -h "$PGHOST_DIR" -U postgres
	local db
	for db in "$@"; do
		"$PGBIN/createdb" -h "$PGHOST_DIR" -U postgres "$db"
	done
}

# postgres_dsn DB is the DSN of one of its databases.
postgres_dsn() { echo "postgres://postgres@/$1?host=$PGHOST_DIR&sslmode=disable"; }

stop_postgres() {
	[ -n "${PGPID:-}" ] || return 0
	kill -TERM -- "-$PGPID" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$PGPID" 2>/dev/null || break; sleep 0.1; done
	kill -KILL -- "-$PGPID" 2>/dev/null || true
}
