package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// Helpers of the tests that run against PostgreSQL: pools, backends,
// sessions, the big result and the stream modes.

// cursorModes are the cursor-backed fetch sizes the tests run: a batch
// of one row, a small fixed batch, and FetchAuto.
var cursorModes = []string{"jsonstream_fetch_size=1", "jsonstream_fetch_size=7", "jsonstream_fetch_size=auto"}

// openCursorPG opens a jsonstream pool of one connection in cursor mode.
func openCursorPG(t *testing.T, mode string) *sql.DB {
	t.Helper()
	db := openPG(t, DriverName, mode)
	db.SetMaxOpenConns(1)
	return db
}

// pidOf returns the server process of q's connection.
func pidOf(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var p int
	require.NoError(t, q.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&p))
	return p
}

// sessionClean asserts that the session of q is outside any transaction
// and has no cursor open.
func sessionClean(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) {
	t.Helper()
	var cursors int
	var inTx bool
	// now() is the transaction's start: in a transaction block it stays
	// put while statement_timestamp moves on.
	// A single statement, whatever the pool's mode: a cursor of its own
	// would be counted.
	single, err := NewStream(WithStreamMode(ModeSingle))
	require.NoError(t, err)
	require.NoError(t, q.QueryRowContext(context.Background(),
		"SELECT (SELECT count(*) FROM pg_cursors), now() <> statement_timestamp()", single).Scan(&cursors, &inTx))
	assert.Zero(t, cursors, "cursors left open")
	assert.False(t, inTx, "session left in a transaction block")
}

// openCursorDialed is a jsonstream pool of one connection in cursor mode
// whose connections go through base, so that a test can fault them.
func openCursorDialed(t *testing.T, base pq.Dialer, opts ...Option) *sql.DB {
	t.Helper()
	pc, err := pq.NewConnector(pgtest.DSN(t))
	require.NoError(t, err)
	c, err := NewConnector(pc, opts...)
	require.NoError(t, err)
	pc.Dialer(NewDialer(base)) // after NewConnector, which installs its own
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	return db
}

var errDeadlineFault = errors.New("fault: SetReadDeadline failed")

// failDeadlines makes the read deadlines of s that fail selects fail
// with errDeadlineFault; nil ends it.
func failDeadlines(s *fakeSock, fail func(time.Time) bool) {
	if fail == nil {
		s.setOnDeadline(nil)
		return
	}
	s.setOnDeadline(func(t time.Time) error {
		if fail(t) {
			return errDeadlineFault
		}
		return nil
	})
}

// openPG opens the test server through driverName ("postgres" or
// "jsonstream"); extra is appended to the DSN.
func openPG(t testing.TB, driverName, extra string) *sql.DB {
	t.Helper()
	dsn := pgtest.DSN(t)
	if extra != "" {
		dsn += " " + extra
	}
	db, err := sql.Open(driverName, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// streamModes are the DSN fragments of jsonstream's stream modes: the
// single statement, cursor-backed with FetchAuto and with a fixed batch
// size (TestCursorStreamsEveryRow crosses batches of 1 and 7 rows), and
// the default, under which reads are portal streams.
var streamModes = []string{singleDSN, "jsonstream_fetch_size=auto", "jsonstream_fetch_size=100", ""}

// singleDSN pins the single-statement mode; the default ("") runs reads
// as portal streams.
const singleDSN = "jsonstream_mode=single"

// both runs f once through lib/pq and once through jsonstream in each
// stream mode, and requires the same observable result.
func both[T any](t *testing.T, f func(t *testing.T, db *sql.DB) T) {
	t.Helper()
	bothIn(t, streamModes, f)
}

// bothSingle is both for what cursor mode refuses with ErrCursorQuery
// (SHOW, several statements in one query; see
// TestCursorRejectsWhatDeclareCannotTake): the single-statement mode and
// the default.
func bothSingle[T any](t *testing.T, f func(t *testing.T, db *sql.DB) T) {
	t.Helper()
	bothIn(t, []string{singleDSN, ""}, f)
}

func bothIn[T any](t *testing.T, modes []string, f func(t *testing.T, db *sql.DB) T) {
	t.Helper()
	want := f(t, openPG(t, "postgres", ""))
	for _, mode := range modes {
		t.Run("mode="+mode, func(t *testing.T) {
			got := f(t, openPG(t, DriverName, mode))
			assert.Equal(t, want, got, "jsonstream differs from lib/pq")
		})
	}
}

// scanAll reads every row as []any of driver values, then closes rows.
func scanAll(t *testing.T, rows *sql.Rows) [][]any {
	t.Helper()
	defer rows.Close()
	return scanAllOpen(t, rows)
}

// scanAllOpen reads the rows of the current result set as []any of
// driver values.
func scanAllOpen(t *testing.T, rows *sql.Rows) [][]any {
	t.Helper()
	cols, err := rows.Columns()
	require.NoError(t, err)
	var out [][]any
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		require.NoError(t, rows.Scan(ptrs...))
		out = append(out, vals)
	}
	require.NoError(t, rows.Err())
	return out
}

// closeModesDSN are the DSN forms of every close mode.
var closeModesDSN = []string{"jsonstream_close=auto", "jsonstream_close=cut", "jsonstream_close=drain"}

// needRowsTable creates the rows table once per test process; with an
// existing server (JSONSTREAM_TEST_DSN) a complete table is reused.
func needRowsTable(t testing.TB) {
	t.Helper()
	dsn := pgtest.DSN(t)
	rowsTable.once.Do(func() {
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			rowsTable.err = err
			return
		}
		defer db.Close()
		var n int
		if db.QueryRow("SELECT count(*) FROM jsonstream_test_rows").Scan(&n) == nil && n == bigRows {
			return
		}
		_, rowsTable.err = db.Exec(`DROP TABLE IF EXISTS jsonstream_test_rows;
			CREATE TABLE jsonstream_test_rows (g int PRIMARY KEY, pad text NOT NULL);
			INSERT INTO jsonstream_test_rows SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(bigRows) + `) g;
			ANALYZE jsonstream_test_rows`)
	})
	require.NoError(t, rowsTable.err, "creating the rows table")
}

// backend returns a dedicated connection of db and its server process id.
func backend(t *testing.T, db *sql.DB) (*sql.Conn, int) {
	t.Helper()
	needRowsTable(t)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	var pid int
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&pid))
	return conn, pid
}

// activity returns the state and wait event of backend pid, and whether
// it still exists.
func activity(t *testing.T, monitor *sql.DB, pid int) (state, waitEvent string, alive bool) {
	t.Helper()
	var st, we sql.NullString
	err := monitor.QueryRow(`SELECT state, wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&st, &we)
	if err == sql.ErrNoRows {
		return "", "", false
	}
	require.NoError(t, err)
	return st.String, we.String, true
}

// requireBackendStops waits up to a second for backend pid to finish its
// query: gone, or idle.
func requireBackendStops(t *testing.T, monitor *sql.DB, pid int) {
	t.Helper()
	require.Eventually(t, func() bool {
		state, _, alive := activity(t, monitor, pid)
		return !alive || state == "idle"
	}, 10*time.Second, 10*time.Millisecond, "backend %d still running the query", pid)
}

// openDSN opens dsn through driverName, closed with the test.
func openDSN(t *testing.T, driverName, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// txQueryer is what a test runs statements through: a sql.Conn, or a
// transaction on it.
type txQueryer interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}

// enterTx begins, on conn, the transaction a test runs in: where is
// "BeginTx", "Exec(BEGIN)" (a transaction block lib/pq does not know of),
// or "autocommit" (none). It returns what to run statements through.
func enterTx(t *testing.T, conn *sql.Conn, where string) (txQueryer, *sql.Tx) {
	t.Helper()
	ctx := context.Background()
	switch where {
	case "BeginTx":
		tx, err := conn.BeginTx(ctx, nil)
		require.NoError(t, err)
		return tx, tx
	case "Exec(BEGIN)":
		_, err := conn.ExecContext(ctx, "BEGIN")
		require.NoError(t, err)
	}
	return conn, nil
}

// txGoesOn asserts, after a stream's end, that the transaction enterTx
// began (where) goes on and commits, with the row of 1 that the test
// inserted in table before the stream and a row of 2 inserted now, and
// that the connection, of server process pid, was kept, its session
// clean.
func txGoesOn(t *testing.T, conn *sql.Conn, q txQueryer, tx *sql.Tx, where, table string, pid int) {
	t.Helper()
	ctx := context.Background()
	_, err := q.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
	require.NoError(t, err, "the transaction must go on")
	commitTx(t, conn, tx, where)
	var n int
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n))
	assert.Equal(t, 2, n, "both inserts committed")
	assert.Equal(t, pid, pidOf(t, conn), "the connection was kept")
	sessionClean(t, conn)
}

// commitTx commits the transaction enterTx began.
func commitTx(t *testing.T, conn *sql.Conn, tx *sql.Tx, where string) {
	t.Helper()
	switch where {
	case "BeginTx":
		require.NoError(t, tx.Commit())
	case "Exec(BEGIN)":
		_, err := conn.ExecContext(context.Background(), "COMMIT")
		require.NoError(t, err)
	}
}

// rawInner runs f on lib/pq's connection under conn.
func rawInner(t *testing.T, conn *sql.Conn, f func(inner driver.Conn)) {
	t.Helper()
	require.NoError(t, conn.Raw(func(dc any) error {
		f(dc.(interface{ Unwrap() driver.Conn }).Unwrap())
		return nil
	}))
}

// pinnedConn takes a connection of db for the test, returned when it ends.
func pinnedConn(t *testing.T, db *sql.DB) *sql.Conn {
	t.Helper()
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// streamOn opens a stream of query on conn with a Stream of opts, and
// reads its first row; the rows are closed when the test ends.
func streamOn(t *testing.T, conn *sql.Conn, query string, opts ...Option) (*sql.Rows, *Stream) {
	t.Helper()
	s := mustStream(t, opts...)
	rows, err := conn.QueryContext(context.Background(), query, s)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rows.Close() })
	require.True(t, rows.Next())
	return rows, s
}

// streamOptions are the Stream options of each stream mode, by name, for
// tests that open a stream of each on a connection whose reads are portal
// streams.
var streamOptions = map[string][]Option{
	"portal": nil,
	"cursor": {WithFetchSize(100)},
	"single": {WithStreamMode(ModeSingle)},
}
