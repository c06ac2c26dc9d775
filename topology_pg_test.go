package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// topologyModes are the stream modes every topology runs in, each a
// fragment added to the DSN.
var topologyModes = []topologyMode{
	{"single-statement", singleDSN, ModeSingle},
	{"cursor", "jsonstream_fetch_size=auto", ModeCursor},
	{"portal", portalDSN, ModePortal},
}

// topologyMode is one stream mode of the topology tests.
type topologyMode struct {
	name, dsn string
	mode      StreamMode
}

// topology is one way of reaching the server.
type topology struct {
	name string
	// dsn is the key=value DSN for jsonstream and lib/pq alike.
	dsn func(t *testing.T) string
	// bouncer is set for the topologies through PgBouncer.
	bouncer bool
}

// topologies are the ways production reaches PostgreSQL: TLS (with and
// without verification, with a client certificate), the Unix socket, a
// SCRAM password, and PgBouncer in session and transaction pooling.
func topologies() []topology {
	port := func(t *testing.T) string { return strconv.Itoa(pgtest.Shared(t).Port()) }
	return []topology{
		{name: "tls-require", dsn: func(t *testing.T) string {
			return pgtest.Shared(t).DSNAs("user=postgres sslmode=require")
		}},
		{name: "tls-verify-full", dsn: func(t *testing.T) string {
			s := pgtest.Shared(t)
			return "host=localhost port=" + port(t) + " dbname=postgres user=postgres sslmode=verify-full sslrootcert='" + s.CAFile() + "'"
		}},
		{name: "tls-client-cert", dsn: func(t *testing.T) string {
			s := pgtest.Shared(t)
			cert, key := s.ClientCert()
			return s.DSNAs("user=" + pgtest.CertUser + " sslmode=verify-full sslrootcert='" + s.CAFile() +
				"' sslcert='" + cert + "' sslkey='" + key + "'")
		}},
		{name: "unix-socket", dsn: func(t *testing.T) string {
			return "host='" + pgtest.Shared(t).SocketDir() + "' port=" + port(t) + " dbname=postgres user=postgres"
		}},
		{name: "scram", dsn: func(t *testing.T) string {
			s := pgtest.Shared(t)
			return s.DSNAs("user=" + pgtest.SCRAMUser + " password='" + s.SCRAMPassword() + "' sslmode=disable")
		}},
		{name: "pgbouncer-session", bouncer: true, dsn: func(t *testing.T) string {
			return pgtest.SharedPgBouncer(t).DSN(pgtest.SessionPool)
		}},
		// Queries with arguments need binary_parameters=yes under
		// transaction pooling; see TestPgBouncerTransactionPoolingLibPQ.
		{name: "pgbouncer-transaction", bouncer: true, dsn: func(t *testing.T) string {
			return pgtest.SharedPgBouncer(t).DSN(pgtest.TransactionPool) + " binary_parameters=yes"
		}},
	}
}

// forEachTopologyAndMode runs f for every topology in every stream mode,
// with the DSN that joins the two.
func forEachTopologyAndMode(t *testing.T, f func(t *testing.T, top topology, mode topologyMode, dsn string)) {
	for _, top := range topologies() {
		t.Run(top.name, func(t *testing.T) {
			for _, mode := range topologyModes {
				t.Run(mode.name, func(t *testing.T) {
					needRowsTable(t)
					dsn := top.dsn(t)
					if mode.dsn != "" {
						dsn += " " + mode.dsn
					}
					f(t, top, mode, dsn)
				})
			}
		})
	}
}

// markerSeq makes each marked query's text unique, so that the monitor
// finds its backend in pg_stat_activity whatever the path (a pooler hides
// which server connection a client has).
var markerSeq atomic.Int64

func markedQuery(query string) (marked, marker string) {
	marker = fmt.Sprintf("jsonstream_marker_%d_%d", time.Now().UnixNano(), markerSeq.Add(1))
	return "/* " + marker + " */ " + query, marker
}

// serverQuery returns the pid, state and wait event of the backend running
// the query that carries marker; found is false when none does.
func serverQuery(t *testing.T, monitor *sql.DB, marker string) (pid int, state, waitEvent string, found bool) {
	t.Helper()
	var st, we sql.NullString
	err := monitor.QueryRow(`SELECT pid, state, wait_event FROM pg_stat_activity
		WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() ORDER BY backend_start DESC LIMIT 1`, marker).Scan(&pid, &st, &we)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", "", false
	}
	require.NoError(t, err)
	return pid, st.String, we.String, true
}

// requireServerQueryStops waits up to a second for the query that carries
// marker to stop running on the server, and returns how long it waited.
func requireServerQueryStops(t *testing.T, monitor *sql.DB, marker string) time.Duration {
	t.Helper()
	start := time.Now()
	require.Eventually(t, func() bool {
		_, state, _, found := serverQuery(t, monitor, marker)
		return !found || state != "active"
	}, time.Second, time.Millisecond, "the server still runs the query")
	return time.Since(start)
}

// monitorDB reaches the server directly as postgres, for pg_stat_activity.
func monitorDB(t *testing.T) *sql.DB {
	return openDSN(t, "postgres", pgtest.Shared(t).DSN())
}

func TestTopologies(t *testing.T) {
	forEachTopologyAndMode(t, func(t *testing.T, top topology, mode topologyMode, dsn string) {
		monitor := monitorDB(t)
		db := openDSN(t, DriverName, dsn)
		t.Run("drop-in", func(t *testing.T) { topologyDropIn(t, top.dsn(t), mode.dsn) })
		t.Run("pause", func(t *testing.T) { topologyPause(t, db, monitor, mode.mode) })
		if mode.mode != ModeSingle {
			t.Run("endings-keep-connection", func(t *testing.T) { topologyKeepsConnection(t, db) })
		}
		for _, mode := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
			t.Run("early-close-"+mode.String(), func(t *testing.T) { topologyEarlyClose(t, db, monitor, mode) })
		}
		t.Run("cancel", func(t *testing.T) { topologyCancel(t, db, monitor) })
		t.Run("context", func(t *testing.T) { topologyContext(t, db, monitor) })
		t.Run("100-queries-after", func(t *testing.T) { hundredQueries(t, db) })
	})
}

// topologyDropIn: the same values and errors through lib/pq and
// jsonstream in the stream mode given by mode, a DSN fragment, and the
// connection goes the way the topology says.
func topologyDropIn(t *testing.T, dsn, mode string) {
	var results [2][]any
	for i, name := range []string{"postgres", DriverName} {
		if name == DriverName && mode != "" {
			dsn += " " + mode
		}
		db := openDSN(t, name, dsn)
		var user, ssl string
		var viaSocket bool
		require.NoError(t, db.QueryRow(`SELECT current_user, coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), 'none'),
			inet_client_addr() IS NULL`).Scan(&user, &ssl, &viaSocket))
		rows, err := db.Query(typesQuery, 1, 2, "three")
		require.NoError(t, err)
		values := scanAll(t, rows)
		_, err = db.Exec("SELECT 1/0")
		pqErr, ok := err.(*pq.Error) //nolint:errorlint // drop-in code asserts directly
		require.True(t, ok, "%T %v", err, err)
		tx, err := db.Begin()
		require.NoError(t, err)
		var inTx int
		require.NoError(t, tx.QueryRow("SELECT $1::int + 1", 41).Scan(&inTx))
		require.NoError(t, tx.Commit())
		results[i] = []any{user, ssl, viaSocket, values, pqErr.Code, inTx}
	}
	assert.Equal(t, results[0], results[1], "jsonstream differs from lib/pq")
	t.Logf("user %v, ssl %v, unix socket %v", results[1][0], results[1][1], results[1][2])
}

// topologyPause: while paused the server waits on the client
// (ClientWrite; in cursor mode idle in the cursor's transaction) and no
// row arrives; after Resume every row comes once.
func topologyPause(t *testing.T, db, monitor *sql.DB, mode StreamMode) {
	// Enough rows to fill the socket buffers of the single statement; a
	// cursor's or a portal's server waits after each batch.
	n := 300_000
	if mode != ModeSingle {
		n = 20_000
	}
	query, marker := markedQuery(bigQuery)
	s := mustStream(t)
	rows, err := db.Query(query, n, s)
	require.NoError(t, err)
	defer rows.Close()
	read, next := inOrder(t, rows)
	read(1000)
	require.NoError(t, s.Pause())
	waiting := func() bool {
		if mode == ModePortal {
			// The server has sent what it was asked for and waits for
			// the next Execute.
			_, state, we, _ := serverQuery(t, monitor, marker)
			return state == "active" && we == "ClientRead"
		}
		if mode == ModeCursor {
			// The backend's last statement is a FETCH of the cursor.
			var n int
			require.NoError(t, monitor.QueryRow(`SELECT count(*) FROM pg_stat_activity
				WHERE query LIKE 'FETCH FORWARD % FROM jsonstream_cursor_%' AND state = 'idle in transaction'`).Scan(&n))
			return n > 0
		}
		_, _, we, _ := serverQuery(t, monitor, marker)
		return we == "ClientWrite"
	}
	require.Eventually(t, waiting, 5*time.Second, 20*time.Millisecond, "the server should wait on the client")
	before := s.Stats()
	time.Sleep(200 * time.Millisecond)
	after := s.Stats()
	assert.Equal(t, int64(1000), before.Rows)
	assert.Equal(t, before.Rows, after.Rows, "rows delivered while paused")
	// Still waiting, not done: through a pooler the server's write may go
	// on for a moment as the buffers between them grow, so the wait is
	// looked for again rather than sampled once.
	assert.Eventually(t, waiting, 5*time.Second, 20*time.Millisecond, "still waiting on the client")
	require.NoError(t, s.Resume())
	read(n)
	require.NoError(t, rows.Err())
	assert.Equal(t, n+1, next(), "every row after Resume")
	assert.Equal(t, Complete, s.State())
}

// topologyEarlyClose: Close after one row stops the server query at once
// unless the mode drains.
func topologyEarlyClose(t *testing.T, db, monitor *sql.DB, mode CloseMode) {
	query, marker := markedQuery(bigQuery)
	s := mustStream(t, WithCloseMode(mode))
	n := bigRows
	if mode == CloseDrain {
		n = 100_000 // a drain reads it all
	}
	rows, err := db.Query(query, n, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	start := time.Now()
	require.NoError(t, rows.Close())
	took := time.Since(start)
	assert.Equal(t, Closed, s.State())
	if mode != CloseDrain {
		assert.Less(t, took, closeBound)
	}
	stopped := requireServerQueryStops(t, monitor, marker)
	t.Logf("Close after 1 of %d rows took %v; the server query stopped within %v more", n, took, stopped)
}

// topologyKeepsConnection: in the modes that stop a stream without
// cutting its connection, an early Close, Cancel and the end of the
// context leave the client connection serving the next query.
func topologyKeepsConnection(t *testing.T, db *sql.DB) {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	for _, end := range []string{"close", "cancel", "context"} {
		qctx, cancel := context.WithCancel(ctx)
		s := mustStream(t)
		rows, err := conn.QueryContext(qctx, bigQuery, bigRows, s)
		require.NoError(t, err, end)
		require.True(t, rows.Next(), end)
		switch end {
		case "cancel":
			require.NoError(t, s.Cancel())
		case "context":
			cancel()
		}
		if end != "close" {
			for rows.Next() {
			}
		}
		_ = rows.Close()
		cancel()
		var one int
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&one), "after %s", end)
	}
}

// topologyCancel: Cancel on a paused stream fails it with ErrCanceled and
// stops the server query.
func topologyCancel(t *testing.T, db, monitor *sql.DB) {
	query, marker := markedQuery(bigQuery)
	s := mustStream(t)
	rows, err := db.Query(query, bigRows, s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	time.AfterFunc(50*time.Millisecond, func() { _ = s.Cancel() })
	assert.False(t, rows.Next())
	assert.ErrorIs(t, rows.Err(), ErrCanceled)
	requireServerQueryStops(t, monitor, marker)
}

// topologyContext: the query's context ending mid-stream ends it with the
// context's error and stops the server query.
func topologyContext(t *testing.T, db, monitor *sql.DB) {
	query, marker := markedQuery(bigQuery)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows, err := db.QueryContext(ctx, query, bigRows)
	require.NoError(t, err)
	defer rows.Close()
	for i := 0; i < 1000; i++ {
		require.True(t, rows.Next())
	}
	cancel()
	for rows.Next() {
	}
	assert.ErrorIs(t, rows.Err(), context.Canceled)
	requireServerQueryStops(t, monitor, marker)
}

// hundredQueries: after everything above, the pool serves 100 queries
// with no error, and none was canceled by a late cancel request.
func hundredQueries(t *testing.T, db *sql.DB) {
	var failed, canceled int
	for i := 0; i < 100; i++ {
		var sum int
		err := db.QueryRow("SELECT sum(g) FROM generate_series(1, $1::int) g", i+1).Scan(&sum)
		var pqErr *pq.Error
		switch {
		case errors.As(err, &pqErr) && pqErr.Code == "57014":
			canceled++
		case err != nil:
			failed++
			t.Logf("query %d: %v", i, err)
		case sum != (i+1)*(i+2)/2:
			failed++
		}
	}
	assert.Zero(t, failed, "failed queries")
	assert.Zero(t, canceled, "queries canceled (SQLSTATE 57014)")
}

// adminRows runs a SHOW command on PgBouncer's admin console and returns
// its rows as column name to text.
func adminRows(t *testing.T, admin *sql.DB, show string) []map[string]string {
	t.Helper()
	rows, err := admin.Query(show)
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	var out []map[string]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		require.NoError(t, rows.Scan(ptrs...))
		m := make(map[string]string, len(cols))
		for i, c := range cols {
			m[c] = vals[i].String
		}
		out = append(out, m)
	}
	require.NoError(t, rows.Err())
	return out
}

// serversOf returns PgBouncer's server connections of database db as
// "state pid" strings.
func serversOf(t *testing.T, admin *sql.DB, db string) []string {
	var out []string
	for _, s := range adminRows(t, admin, "SHOW SERVERS") {
		if s["database"] == db {
			out = append(out, s["state"]+" "+s["remote_pid"])
		}
	}
	return out
}

// TestPgBouncerServerAfterEarlyClose shows what PgBouncer does with its
// server connection when jsonstream cuts the client connection in the
// middle of a result: it closes that server connection (SHOW SERVERS no
// longer lists it), whose backend then ends, rather than hand a
// connection with half a result to another client.
func TestPgBouncerServerAfterEarlyClose(t *testing.T) {
	b := pgtest.SharedPgBouncer(t)
	needRowsTable(t)
	t.Logf("PgBouncer %s", b.Version())
	admin := openDSN(t, "postgres", b.DSN("pgbouncer"))
	monitor := monitorDB(t)
	for _, pool := range []string{pgtest.SessionPool, pgtest.TransactionPool} {
		t.Run(pool, func(t *testing.T) {
			db := openDSN(t, DriverName, b.DSN(pool)+" binary_parameters=yes")
			db.SetMaxOpenConns(1)
			query, marker := markedQuery(bigQuery)
			rows, err := db.Query(query, bigRows, mustStream(t, WithCloseMode(CloseCut)))
			require.NoError(t, err)
			require.True(t, rows.Next())
			pid, _, _, found := serverQuery(t, monitor, marker)
			require.True(t, found)
			during := serversOf(t, admin, pool)
			assert.Contains(t, during, "active "+strconv.Itoa(pid), "the query's server connection")
			start := time.Now()
			require.NoError(t, rows.Close())
			require.Eventually(t, func() bool {
				for _, s := range serversOf(t, admin, pool) {
					if strings.HasSuffix(s, " "+strconv.Itoa(pid)) {
						return false
					}
				}
				return true
			}, 2*time.Second, 5*time.Millisecond, "PgBouncer still lists the server connection")
			gone := time.Since(start)
			require.Eventually(t, func() bool {
				var n int
				require.NoError(t, monitor.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n))
				return n == 0
			}, 2*time.Second, 5*time.Millisecond, "the backend lives on")
			t.Logf("during: %v; after Close: %v (server connection %d closed by PgBouncer within %v, backend gone within %v)",
				during, serversOf(t, admin, pool), pid, gone, time.Since(start))
			hundredQueries(t, db)
		})
	}
}

// TestPgBouncerServerAfterOwedEnd: under transaction pooling, an early
// close of a portal stream outside a transaction ends with ROLLBACK and
// no Sync, so PgBouncer keeps the server connection with the client; the
// connection sends the Sync itself when nothing follows, and PgBouncer
// then has its server connection back, idle in the pool. Without that
// Sync it would stay active, held for the client until its next
// statement.
func TestPgBouncerServerAfterOwedEnd(t *testing.T) {
	b := pgtest.SharedPgBouncer(t)
	needRowsTable(t)
	withOwedEndMaxAge(t, time.Minute) // however slow the machine
	admin := openDSN(t, "postgres", b.DSN("pgbouncer"))
	db := openDSN(t, DriverName, b.DSN(pgtest.TransactionPool))
	db.SetMaxOpenConns(1)
	active := func() []string {
		var out []string
		for _, s := range serversOf(t, admin, pgtest.TransactionPool) {
			if strings.HasPrefix(s, "active ") {
				out = append(out, s)
			}
		}
		return out
	}
	for i := 0; i < 3; i++ {
		rows, err := db.Query(bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		require.Eventually(t, func() bool { return len(active()) == 0 }, 5*time.Second, 5*time.Millisecond,
			"PgBouncer's server connection is still the client's: %v", active())
	}
	hundredQueries(t, db)
}

// TestPgBouncerTransactionPoolingLibPQ measures lib/pq alone (no
// jsonstream) under transaction pooling. lib/pq names its prepared
// statements "1", "2", ... per client connection; PgBouncer before 1.21
// does not track them, so two clients sharing a server connection collide.
// Queries with arguments are unnamed statements; binary_parameters=yes
// sends them in one round trip, which PgBouncer keeps on one server
// connection.
func TestPgBouncerTransactionPoolingLibPQ(t *testing.T) {
	b := pgtest.SharedPgBouncer(t)
	t.Logf("PgBouncer %s", b.Version())
	before121 := versionBefore(b.Version(), 1, 21)

	t.Run("named prepared statements", func(t *testing.T) {
		db := openDSN(t, "postgres", b.DSN(pgtest.TransactionPool))
		ctx := context.Background()
		var errs []string
		for i := 0; i < 2; i++ {
			// Two client connections, each preparing its statement "1";
			// PgBouncer gives both the same idle server connection.
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			stmt, err := conn.PrepareContext(ctx, "SELECT $1::int")
			if err == nil {
				defer stmt.Close() // kept, as an application keeps its statements
				var v int
				err = stmt.QueryRowContext(ctx, i).Scan(&v)
			}
			if err != nil {
				errs = append(errs, err.Error())
			}
		}
		t.Logf("errors: %q", errs)
		if before121 {
			require.NotEmpty(t, errs)
			assert.Contains(t, errs[0], `prepared statement "1" already exists`)
		}
	})
	t.Run("unprepared queries with binary_parameters=yes", func(t *testing.T) {
		// Twice as many clients as the pool has server connections, so
		// that clients share them.
		const workers, each = 2 * pgtest.PgBouncerPoolSize, 25
		without, firstErr := concurrentArgQueries(t, openDSN(t, "postgres", b.DSN(pgtest.TransactionPool)), workers, each)
		with, _ := concurrentArgQueries(t, openDSN(t, "postgres", b.DSN(pgtest.TransactionPool)+" binary_parameters=yes"), workers, each)
		// Without it the failures depend on timing, so they are reported,
		// not asserted.
		t.Logf("%d clients, %d queries with an argument: %d failed without binary_parameters (first: %v), %d with it",
			workers, workers*each, without, firstErr, with)
		assert.Zero(t, with)
	})
}

// concurrentArgQueries runs perWorker queries with an argument in each of
// workers goroutines and returns how many failed, and the first error.
func concurrentArgQueries(_ *testing.T, db *sql.DB, workers, perWorker int) (int, error) {
	db.SetMaxOpenConns(workers)
	var failed atomic.Int64
	var first atomic.Pointer[error]
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func(w int) { // one client; the channel tells the test it ended
			defer func() { done <- struct{}{} }()
			for i := 0; i < perWorker; i++ {
				var v int
				err := db.QueryRow("SELECT $1::int * 2", w*1000+i).Scan(&v)
				if err == nil && v != 2*(w*1000+i) {
					err = fmt.Errorf("got %d for %d", v, w*1000+i)
				}
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, &err)
				}
			}
		}(w)
	}
	for w := 0; w < workers; w++ {
		<-done
	}
	if p := first.Load(); p != nil {
		return int(failed.Load()), *p
	}
	return int(failed.Load()), nil
}

// versionBefore reports whether version ("1.18.0") is below major.minor.
func versionBefore(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma < major || ma == major && mi < minor
}
