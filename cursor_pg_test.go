package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

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
	single, err := NewStream(WithFetchSize(0))
	require.NoError(t, err)
	require.NoError(t, q.QueryRowContext(context.Background(),
		"SELECT (SELECT count(*) FROM pg_cursors), now() <> statement_timestamp()", single).Scan(&cursors, &inTx))
	assert.Zero(t, cursors, "cursors left open")
	assert.False(t, inTx, "session left in a transaction block")
}

func TestCursorStreamsEveryRow(t *testing.T) {
	for _, mode := range cursorModes {
		t.Run(mode, func(t *testing.T) {
			db := openCursorPG(t, mode)
			before := pidOf(t, db)
			for _, n := range []int{0, 1, 6, 7, 8, 100, 5000} {
				s := mustStream(t)
				rows, err := db.Query("SELECT g, 'row ' || g FROM generate_series(1, $1::int) g", n, s)
				require.NoError(t, err)
				next := 1
				for rows.Next() {
					var g int
					var text string
					require.NoError(t, rows.Scan(&g, &text))
					require.Equal(t, next, g, "every row once, in order")
					require.Equal(t, fmt.Sprint("row ", g), text)
					next++
				}
				require.NoError(t, rows.Err())
				require.NoError(t, rows.Close())
				assert.Equal(t, n+1, next, "%d rows", n)
				assert.Equal(t, Complete, s.State())
				assert.Equal(t, int64(n), s.Stats().Rows)
			}
			assert.Equal(t, before, pidOf(t, db), "same connection throughout")
			sessionClean(t, db)
		})
	}
}

func TestCursorEarlyCloseKeepsConnection(t *testing.T) {
	needRowsTable(t)
	for _, mode := range cursorModes {
		t.Run(mode, func(t *testing.T) {
			db := openCursorPG(t, mode)
			before := pidOf(t, db)
			_, err := db.Exec("SET application_name = 'kept_session'")
			require.NoError(t, err)
			rows, err := db.Query(bigQuery, bigRows)
			require.NoError(t, err)
			require.True(t, rows.Next())
			start := time.Now()
			require.NoError(t, rows.Close())
			took := time.Since(start)
			t.Logf("Close after 1 of %d rows took %v", bigRows, took)
			assert.Less(t, took, closeBound)
			assert.Equal(t, before, pidOf(t, db), "the connection was kept")
			var app string
			require.NoError(t, db.QueryRow("SELECT current_setting('application_name')").Scan(&app))
			assert.Equal(t, "kept_session", app, "the session kept its state")
			sessionClean(t, db)
		})
	}
}

// TestCursorQueryRowCommits: a QueryRow closes its rows before it sees
// the end; when the batch held the whole result the statement completed,
// and its effects are committed as in the single-statement mode.
func TestCursorQueryRowCommits(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	_, err := db.Exec("CREATE TEMP SEQUENCE cursor_commit_seq")
	require.NoError(t, err)
	var v int
	require.NoError(t, db.QueryRow("SELECT nextval('cursor_commit_seq')").Scan(&v))
	require.Equal(t, 1, v)
	require.NoError(t, db.QueryRow("SELECT nextval('cursor_commit_seq')").Scan(&v))
	require.Equal(t, 2, v)
	_, err = db.Exec("CREATE TEMP TABLE cursor_commit (a int)")
	require.NoError(t, err)
	_, err = db.Exec(`CREATE FUNCTION pg_temp.cursor_insert(v int) RETURNS int LANGUAGE sql AS
		'INSERT INTO cursor_commit VALUES (v) RETURNING v'`)
	require.NoError(t, err)
	require.NoError(t, db.QueryRow("SELECT pg_temp.cursor_insert(5)").Scan(&v))
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM cursor_commit").Scan(&n))
	assert.Equal(t, 1, n, "the QueryRow's insert was committed")
	sessionClean(t, db)
}

func TestCursorInsideBeginTx(t *testing.T) {
	needRowsTable(t)
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	before := pidOf(t, db)
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.Exec("CREATE TEMP TABLE in_tx (a int)")
	require.NoError(t, err)
	rows, err := tx.Query(bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	start := time.Now()
	require.NoError(t, rows.Close())
	t.Logf("Close inside a transaction after 1 of %d rows took %v", bigRows, time.Since(start))
	assert.Less(t, time.Since(start), closeBound)
	// The transaction goes on: its table is there, a complete stream too.
	var n int
	require.NoError(t, tx.QueryRow("SELECT count(*) FROM in_tx").Scan(&n))
	rows, err = tx.Query("SELECT g FROM generate_series(1, 50) g")
	require.NoError(t, err)
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 50, n)
	require.NoError(t, tx.Rollback(), "jsonstream did not end the transaction")
	var exists bool
	require.NoError(t, db.QueryRow("SELECT to_regclass('pg_temp.in_tx') IS NOT NULL").Scan(&exists))
	assert.False(t, exists, "the rollback was the caller's")
	assert.Equal(t, before, pidOf(t, db))
	sessionClean(t, db)
}

// TestCursorInsideExecBegin: a transaction begun with Exec("BEGIN") on a
// sql.Conn is found, used, and never committed or rolled back by
// jsonstream.
func TestCursorInsideExecBegin(t *testing.T) {
	needRowsTable(t)
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	before := pidOf(t, conn)
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, "CREATE TEMP TABLE exec_begin (a int)")
	require.NoError(t, err)
	for _, complete := range []bool{false, true} {
		rows, err := conn.QueryContext(ctx, bigQuery, map[bool]int{false: bigRows, true: 30}[complete])
		require.NoError(t, err)
		require.True(t, rows.Next())
		if complete {
			for rows.Next() {
			}
			require.NoError(t, rows.Err())
		}
		require.NoError(t, rows.Close())
		var n int
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM exec_begin").Scan(&n),
			"the caller's transaction goes on (complete=%v)", complete)
	}
	_, err = conn.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err)
	var exists bool
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT to_regclass('pg_temp.exec_begin') IS NOT NULL").Scan(&exists))
	assert.False(t, exists, "jsonstream committed the caller's transaction")
	assert.Equal(t, before, pidOf(t, conn))
	sessionClean(t, conn)
}

func TestCursorRejectsWhatDeclareCannotTake(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	before := pidOf(t, db)
	_, err := db.Exec("CREATE TEMP TABLE cursor_reject (a int)")
	require.NoError(t, err)
	for _, q := range []struct {
		query string
		args  []any
		// why is what the error says; server, that the server refused
		// the query (its error is wrapped) rather than jsonstream before
		// sending it.
		why    string
		server bool
	}{
		{"SHOW work_mem", nil, "a SHOW statement is not a query DECLARE takes", false},
		{"SELECT 1; INSERT INTO cursor_reject VALUES (1)", nil, "several statements", false},
		{"INSERT INTO cursor_reject VALUES (2) RETURNING a", nil, "a INSERT statement", false},
		{"INSERT INTO cursor_reject VALUES ($1) RETURNING a", []any{3}, "a INSERT statement", false},
		{"WITH d AS (INSERT INTO cursor_reject VALUES (4) RETURNING a) SELECT * FROM d", nil, "data-modifying", true},
	} {
		t.Run(q.query, func(t *testing.T) {
			rows, err := db.Query(q.query, q.args...)
			if err == nil {
				_ = rows.Close()
			}
			require.Error(t, err)
			t.Log(err)
			assert.ErrorIs(t, err, ErrCursorQuery)
			assert.ErrorContains(t, err, q.why)
			var pqErr *pq.Error
			assert.Equal(t, q.server, errors.As(err, &pqErr), "the server's error is wrapped when the server refused it")
			assert.Contains(t, err.Error(), "WithFetchSize(FetchAuto)")
			var n int
			require.NoError(t, db.QueryRow("SELECT count(*) FROM cursor_reject").Scan(&n))
			assert.Zero(t, n, "nothing ran")
			assert.Equal(t, before, pidOf(t, db), "the connection is kept")
			sessionClean(t, db)
		})
	}
}

func TestCursorErrorPositionInCallersQuery(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=5")
	_, err := db.Query("SELECT a FROM no_such_table")
	var pqErr *pq.Error
	require.True(t, errors.As(err, &pqErr), "%v", err)
	assert.Equal(t, "42P01", string(pqErr.Code))
	assert.Equal(t, "15", pqErr.Position, "position of no_such_table in the query as written")
	_, err = db.Query("SELECT 1/0")
	pqErr, ok := err.(*pq.Error) //nolint:errorlint // drop-in code asserts directly
	require.True(t, ok, "%T %v", err, err)
	assert.Equal(t, "22012", string(pqErr.Code))
	sessionClean(t, db)
}

func TestCursorPreparedStatement(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=3")
	st, err := db.Prepare("SELECT g FROM generate_series(1, $1::int) g")
	require.NoError(t, err)
	defer st.Close()
	for _, n := range []int{2, 3, 10} {
		s := mustStream(t)
		rows, err := st.QueryContext(context.Background(), n, s)
		require.NoError(t, err)
		got := 0
		for rows.Next() {
			got++
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, n, got)
		assert.Equal(t, Complete, s.State())
	}
	sessionClean(t, db)
}

// TestCursorModeFromContext: code that cannot pass a Stream (generated
// queries, ORMs) chooses cursor mode through its context.
func TestCursorModeFromContext(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	ctx, err := ContextWithOptions(context.Background(), WithFetchSize(FetchAuto))
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		rows, err := db.QueryContext(ctx, bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
	}
	assert.Equal(t, before, pidOf(t, db), "early closes in cursor mode kept the connection")
	sessionClean(t, db)
}

// TestStreamModesAgreeOnJSONAndStats: the JSON helpers write the same
// bytes and Stats count the same rows and bytes in every stream mode.
func TestStreamModesAgreeOnJSONAndStats(t *testing.T) {
	type outcome struct {
		NDJSON      string
		Items, Rows int64
		Bytes       int64
		FirstRowSet bool
	}
	var want *outcome
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			var got outcome
			s := mustStream(t)
			rows, err := db.Query(jsonDocsQuery, 3000, 40, s)
			require.NoError(t, err)
			var out strings.Builder
			_, err = WriteNDJSON(context.Background(), &out, rows)
			require.NoError(t, err)
			got.NDJSON = out.String()
			st := s.Stats()
			got.Rows, got.Bytes, got.FirstRowSet = st.Rows, st.Bytes, st.FirstRow > 0

			rows, err = db.Query(jsonDocsQuery, 3000, 40)
			require.NoError(t, err)
			for v, err := range Each[jsonPadItem](rows) {
				require.NoError(t, err)
				got.Items++
				require.Equal(t, int(got.Items), v.ID)
			}
			if want == nil {
				want = &got
				assert.Equal(t, int64(3000), got.Rows)
				return
			}
			assert.Equal(t, *want, got)
		})
	}
}

// TestCursorEarlyCloseOnSlowNetwork: on a network whose round trip is
// longer than the drain timeout, an early close still reads off its batch
// and ends the cursor: the statement that ends it has a bound of its own.
func TestCursorEarlyCloseOnSlowNetwork(t *testing.T) {
	needRowsTable(t)
	p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", pgtest.Shared(t).Port()))
	p.delay.Store(int64(4 * time.Millisecond)) // 8 ms a round trip, past the 5 ms drain timeout
	db := openDSN(t, DriverName, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable jsonstream_fetch_size=auto", p.port()))
	db.SetMaxOpenConns(1)
	first := pidOf(t, db)
	for i := 0; i < 10; i++ {
		rows, err := db.Query(bigQuery, bigRows)
		require.NoError(t, err)
		for j := 0; j <= i; j++ {
			require.True(t, rows.Next())
		}
		require.NoError(t, rows.Close(), "round %d", i)
		require.Equal(t, first, pidOf(t, db), "round %d: the connection was cut", i)
	}
	sessionClean(t, db)
}
