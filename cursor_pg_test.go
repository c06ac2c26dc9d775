package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

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

// TestCursorCancelWhileNotReadingKeepsCallersTx: a Cancel while the
// consumer is busy with a row, and a Close long after it: the batch is
// read off and the caller's transaction goes on.
func TestCursorCancelWhileNotReadingKeepsCallersTx(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_fetch_size=1000")
	db.SetMaxOpenConns(1)
	tx, err := db.Begin()
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.Exec("CREATE TEMP TABLE cursor_keep2 (a int); INSERT INTO cursor_keep2 VALUES (1)")
	require.NoError(t, err)
	s := mustStream(t)
	rows, err := tx.Query(bigQuery, bigRows, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Cancel())
	time.Sleep(300 * time.Millisecond) // the consumer works on its row
	assert.False(t, rows.Next())
	assert.ErrorIs(t, rows.Err(), ErrCanceled)
	_ = rows.Close()
	var a int
	assert.NoError(t, tx.QueryRow("SELECT a FROM cursor_keep2").Scan(&a), "the caller's transaction goes on")
}

// hookCtx is a context whose Err calls hook when it is called from
// cursor.Next: that is, between two batches, after the batch in flight
// was read to its end and before the next FETCH is sent.
type hookCtx struct {
	context.Context
	hook func()
}

func (h *hookCtx) Err() error {
	if h.hook != nil {
		pc := make([]uintptr, 8)
		n := runtime.Callers(2, pc)
		frames := runtime.CallersFrames(pc[:n])
		for {
			f, more := frames.Next()
			if strings.HasSuffix(f.Function, "(*cursor).Next") {
				hook := h.hook
				h.hook = nil
				hook()
				break
			}
			if !more {
				break
			}
		}
	}
	return h.Context.Err()
}

// TestCursorCancelBetweenBatchesSendsNoFetch: a Cancel between two batches
// stops the next FETCH: Next returns at once.
func TestCursorCancelBetweenBatchesSendsNoFetch(t *testing.T) {
	db := openPG(t, DriverName, "jsonstream_fetch_size=10")
	other := openPG(t, "postgres", "")
	_, err := other.Exec("DROP TABLE IF EXISTS cursor_locked; CREATE TABLE cursor_locked (id int PRIMARY KEY); INSERT INTO cursor_locked SELECT generate_series(1, 20)")
	require.NoError(t, err)
	locker, err := other.Begin()
	require.NoError(t, err)
	defer func() { _ = locker.Rollback() }()
	_, err = locker.Exec("SELECT id FROM cursor_locked WHERE id = 15 FOR UPDATE")
	require.NoError(t, err)

	s := mustStream(t)
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx := &hookCtx{Context: cctx}
	rows, err := db.QueryContext(ctx, "SELECT id FROM cursor_locked ORDER BY id FOR UPDATE", s)
	require.NoError(t, err)
	for i := 0; i < 10; i++ {
		require.True(t, rows.Next())
	}
	canceled := make(chan error, 1)
	ctx.hook = func() { canceled <- s.Cancel() }
	done := make(chan bool, 1)
	go func() { done <- rows.Next() }()
	require.NoError(t, <-canceled)
	cancel() // the query's context ends too: the stream is already Failed, nothing more is interrupted
	select {
	case got := <-done:
		assert.False(t, got)
	case <-time.After(2 * time.Second):
		t.Errorf("Next still blocked 2s after Cancel returned nil and the query's context ended (FETCH waits on the lock, no deadline armed)")
		_ = locker.Rollback()
		<-done
	}
	_ = rows.Close()
}

// TestCursorCancelWhileNotReadingKeepsConnection: the same outside a
// transaction: the connection is kept.
func TestCursorCancelWhileNotReadingKeepsConnection(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_fetch_size=1000 jsonstream_drain_timeout=100ms")
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	s := mustStream(t)
	rows, err := db.Query(bigQuery, bigRows, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Cancel())
	time.Sleep(300 * time.Millisecond)
	assert.False(t, rows.Next())
	_ = rows.Close()
	assert.Equal(t, before, pidOf(t, db), "the connection was kept")
}

var _ = sql.ErrNoRows

// TestCursorClientErrorClosesCursorInCallersTx: a value lib/pq cannot
// decode fails the stream on the client, not the transaction: Close still
// closes the cursor.
func TestCursorClientErrorClosesCursorInCallersTx(t *testing.T) {
	db := openPG(t, DriverName, "jsonstream_fetch_size=10")
	db.SetMaxOpenConns(1)
	tx, err := db.Begin()
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	// A DateStyle lib/pq does not parse: the third row's date fails in
	// lib/pq's decode, on the client.
	_, err = tx.Exec("SET LOCAL DateStyle = 'SQL, DMY'")
	require.NoError(t, err)
	rows, err := tx.Query("SELECT g, CASE WHEN g = 3 THEN current_date END FROM generate_series(1, 30) g")
	require.NoError(t, err)
	for rows.Next() {
	}
	require.Error(t, rows.Err())
	t.Logf("Next: %v", rows.Err())
	_ = rows.Close()
	var open int
	require.NoError(t, tx.QueryRow("SELECT count(*) FROM pg_cursors WHERE name LIKE 'jsonstream_cursor_%'", mustStream(t, WithFetchSize(0))).Scan(&open),
		"the caller's transaction is not aborted")
	assert.Zero(t, open, "cursor left open in the caller's transaction")
}

// TestCursorPauseBetweenBatchesHoldsFetch: a Pause that comes between two
// batches holds the next FETCH until Resume.
func TestCursorPauseBetweenBatchesHoldsFetch(t *testing.T) {
	db := openPG(t, DriverName, "jsonstream_fetch_size=auto")
	db.SetMaxOpenConns(1)
	monitor := openPG(t, "postgres", "")
	pid := pidOf(t, db)
	s := mustStream(t)
	ctx := &hookCtx{Context: context.Background()}
	rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g", s)
	require.NoError(t, err)
	for i := 0; i < autoFirstRows; i++ {
		require.True(t, rows.Next())
	}
	paused := make(chan struct{})
	ctx.hook = func() { require.NoError(t, s.Pause()); close(paused) }
	done := make(chan bool, 1)
	go func() { done <- rows.Next() }()
	<-paused
	time.Sleep(200 * time.Millisecond)
	var last string
	require.NoError(t, monitor.QueryRow("SELECT query FROM pg_stat_activity WHERE pid = $1", pid).Scan(&last))
	assert.True(t, strings.HasPrefix(last, "FETCH FORWARD 16 "), "a FETCH was sent after Pause returned: %q", last)
	require.NoError(t, s.Resume())
	assert.True(t, <-done)
	require.NoError(t, rows.Close())
}

// TestTerminatedPooledConnRetriesWithStream: a pooled connection the
// server ended: database/sql retries the query on a new one, and the
// Stream goes with it, in each mode.
func TestTerminatedPooledConnRetriesWithStream(t *testing.T) {
	for _, mode := range []string{"", "jsonstream_fetch_size=10"} {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			monitor := openPG(t, "postgres", "")
			pid := pidOf(t, db)
			_, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid)
			require.NoError(t, err)
			time.Sleep(100 * time.Millisecond)
			s := mustStream(t)
			rows, err := db.Query("SELECT g FROM generate_series(1, 5) g", s)
			if assert.NoError(t, err, "database/sql retries the dead connection") {
				_ = rows.Close()
			}
		})
	}
}

// TestCursorLateCloseKeepsConnection: a stream closed long after its last
// Next keeps its connection.
func TestCursorLateCloseKeepsConnection(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_fetch_size=1000 jsonstream_drain_timeout=100ms")
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	for i := 0; i < 5; i++ {
		rows, err := db.Query(bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		time.Sleep(300 * time.Millisecond)
		require.NoError(t, rows.Close())
		assert.Equal(t, before, pidOf(t, db), "the connection was kept")
	}
}

// Tests that pin cursor mode's endings against the server (issue 17,
// "Tests that hold the new code"): each fails when the code it names is
// changed.

// TestCursorContextEndsDuringFirstFetch: the first FETCH runs the query
// (DECLARE only plans it); a context that ends while it runs bounds its
// read, and Query returns the context's error at once, not when the
// server is done. As in the single-statement mode, a query ended so has
// not failed as a stream: its Stream is not used up and its observer
// hears nothing.
func TestCursorContextEndsDuringFirstFetch(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	require.NoError(t, db.Ping()) // the connection exists: the deadline meets the FETCH, not the dial
	rec := &recorder{}
	s := mustStream(t, WithObserver(rec))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	rows, err := db.QueryContext(ctx, "SELECT pg_sleep(3)", s)
	took := time.Since(start)
	if err == nil {
		_ = rows.Close()
	}
	t.Logf("Query returned %v after %v", err, took)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, took, 2*time.Second, "Query waited for the server's 3 s")
	assert.False(t, s.Started(), "the Stream was bound to the ended query")
	assert.Empty(t, rec.kinds(), "events of a query that returned the context's error")
	var one int
	require.NoError(t, db.QueryRow("SELECT 1", s).Scan(&one), "the pool, and the Stream, serve the next query")
}

// TestCursorContextEndDuringFinalCommitFreesNext: the last batch read, the
// stream's Next commits jsonstream's transaction; when the network stalls
// under that COMMIT and the context ends, Next returns within the drain
// timeout with the context's error.
func TestCursorContextEndDuringFinalCommitFreesNext(t *testing.T) {
	const drain = 100 * time.Millisecond
	d := &fakeDialer{}
	db := openCursorDialed(t, d, WithFetchSize(100), WithDrainTimeout(drain))
	require.NoError(t, db.Ping())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 5) g")
	require.NoError(t, err)
	defer rows.Close()
	for i := 0; i < 5; i++ {
		require.True(t, rows.Next())
	}
	sc := d.last()
	sc.stall()
	done := make(chan bool, 1)
	go func() { done <- rows.Next() }() // the batch was short: Next sends COMMIT
	select {
	case <-sc.swallowed:
	case <-time.After(10 * time.Second):
		t.Fatal("Next sent no COMMIT")
	}
	select {
	case got := <-done:
		t.Fatalf("Next returned (%v, %v) though the COMMIT never reached the server", got, rows.Err())
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	cancel()
	select {
	case got := <-done:
		took := time.Since(start)
		t.Logf("Next returned %v after the context ended (drain timeout %v)", took, drain)
		assert.False(t, got)
		assert.ErrorIs(t, rows.Err(), context.Canceled)
		assert.Less(t, took, drain+time.Second)
	case <-time.After(10 * time.Second):
		_ = sc.Close() // frees the stuck Next, so the test fails instead of hanging
		<-done
		t.Fatal("Next stuck on the COMMIT after the context ended")
	}
}

// TestCursorRefusedDeclareKeepsCallersTx: in the caller's transaction a
// DECLARE the server refuses failed the transaction, and the cursor with
// it: jsonstream sends nothing more (a CLOSE, or a Parse of the query to
// word a syntax error, would fail and cost the connection), Query returns
// the server's error, and the caller's Rollback succeeds on the same
// backend. The cases: an unknown table, and a syntax error that only the
// server sees (the scan takes the text for a SELECT).
func TestCursorRefusedDeclareKeepsCallersTx(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=auto")
	before := pidOf(t, db)
	for _, tc := range []struct{ query, code string }{
		{"SELECT * FROM no_such_table_cursor_pins", "42P01"},
		{"SELECT 1 +", "42601"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			tx, err := db.BeginTx(context.Background(), nil)
			require.NoError(t, err)
			inTx := pidOf(t, tx)
			rows, err := tx.Query(tc.query)
			if err == nil {
				_ = rows.Close()
			}
			var pqErr *pq.Error
			require.ErrorAs(t, err, &pqErr)
			assert.Equal(t, tc.code, string(pqErr.Code), "%v", err)
			require.NoError(t, tx.Rollback(), "the caller's transaction is not usable")
			assert.Equal(t, before, inTx)
			assert.Equal(t, before, pidOf(t, db), "the connection was replaced")
			sessionClean(t, db)
		})
	}
}

// TestCursorCloseKeepsBatchErrorWhenEndDeadlineFails: Close reads off the
// batch in flight and meets an error there (a value lib/pq cannot
// decode); then the deadline of the statement that ends the cursor cannot
// be set. The connection is cut, and Close returns the batch's error, not
// the socket's.
func TestCursorCloseKeepsBatchErrorWhenEndDeadlineFails(t *testing.T) {
	fd := &fakeDialer{}
	// The drain's deadline is 50 ms away, the end statement's 1 s
	// (cursorEndTimeout): the fault takes only the latter.
	db := openCursorDialed(t, fd, WithFetchSize(100), WithDrainTimeout(50*time.Millisecond), WithCloseMode(CloseAuto))
	// A DateStyle lib/pq does not parse: row 3's date fails in lib/pq's
	// decode, on the client, leaving the transaction and the connection
	// as they were.
	_, err := db.Exec("SET DateStyle = 'SQL, DMY'")
	require.NoError(t, err)
	const query = "SELECT g, CASE WHEN g = 3 THEN current_date END FROM generate_series(1, 300) g"
	before := pidOf(t, db)

	// The error the batch holds, as Next reports it.
	rows, err := db.Query(query)
	require.NoError(t, err)
	for rows.Next() {
	}
	batchErr := rows.Err()
	require.Error(t, batchErr)
	require.Empty(t, sqlState(batchErr), "a client error: %v", batchErr)
	_ = rows.Close()
	require.Equal(t, before, pidOf(t, db))

	rows, err = db.Query(query)
	require.NoError(t, err)
	require.True(t, rows.Next())
	sock := fd.last()
	failDeadlines(sock, func(d time.Time) bool { return !d.IsZero() && time.Until(d) > 500*time.Millisecond })
	err = rows.Close()
	failDeadlines(sock, nil)
	require.Equal(t, int64(1), sock.faults.Load(), "the fault was not injected")
	assert.EqualError(t, err, batchErr.Error(), "Close lost the batch's error")
	assert.False(t, errors.Is(err, errDeadlineFault), "the socket's error instead of the batch's")
	assert.True(t, sock.isClosed(), "the connection was not cut")
	assert.NotEqual(t, before, pidOf(t, db), "the connection went back to the pool")
}

// TestCursorUncertainTextGoesInParseMessage: a text whose reading depends
// on the server's settings (a backslash in a standard string) is never
// sent in the simple protocol, where it could close DECLARE's parentheses
// itself and run a statement beside it. With standard_conforming_strings
// on, '\' is a whole string: wrapped in a DECLARE this text is a DECLARE,
// a DELETE and a SELECT; lib/pq refuses it unwrapped.
func TestCursorUncertainTextGoesInParseMessage(t *testing.T) {
	o := newSmuggleOracle(t)
	for _, q := range []string{
		`SELECT '\') ; DELETE FROM victim; SELECT ('\'`,
		`SELECT '\'); DELETE FROM victim; SELECT ('\'`,
		// Two statements to lib/pq, which runs both: the scan's end of
		// the first is a guess, and the text goes whole, so that the
		// DELETE is not left out in silence.
		`SELECT 1; DELETE FROM victim WHERE '\' = '\'`,
	} {
		t.Run(q, func(t *testing.T) {
			require.False(t, scanQuery(q).certain, "the scan is sure of it: not the case this test is about")
			o.check(t, q)
		})
	}
}

// TestCursorEndStatementOutlastsDrainTimeout: the statement that ends the
// cursor on an early Close gets a bound of its own (cursorEndTimeout),
// not the drain timeout: on a network whose round trip (50 ms) is ten
// times the drain timeout, and past what the drain's grace allows, the
// connection and its session are kept.
func TestCursorEndStatementOutlastsDrainTimeout(t *testing.T) {
	needRowsTable(t)
	p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", pgtest.Shared(t).Port()))
	p.delay.Store(int64(25 * time.Millisecond))
	db := openDSN(t, DriverName, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable jsonstream_fetch_size=auto", p.port()))
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	for i := 0; i < 3; i++ {
		rows, err := db.Query(bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		require.Equal(t, before, pidOf(t, db), "round %d: the connection was cut", i)
	}
	sessionClean(t, db)
}

// TestCursorEarlyCloseInCallersTxDrainsWholeBatch: in the caller's
// transaction an early Close reads off the batch in flight however long
// that takes, whatever the close mode: a cut would end the transaction.
// The batch here (50,000 rows, megabytes) cannot arrive within the 1 ms
// drain timeout.
func TestCursorEarlyCloseInCallersTxDrainsWholeBatch(t *testing.T) {
	needRowsTable(t)
	db := openCursorPG(t, "jsonstream_fetch_size=50000 jsonstream_drain_timeout=1ms")
	before := pidOf(t, db)
	for _, mode := range []CloseMode{CloseAuto, CloseCut} {
		t.Run(mode.String(), func(t *testing.T) {
			tx, err := db.Begin()
			require.NoError(t, err)
			defer func() { _ = tx.Rollback() }()
			_, err = tx.Exec("CREATE TEMP TABLE cursor_pins_tx (a int) ON COMMIT DROP")
			require.NoError(t, err)
			rows, err := tx.Query(bigQuery, bigRows, mustStream(t, WithCloseMode(mode)))
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())
			var n int
			require.NoError(t, tx.QueryRow("SELECT count(*) FROM cursor_pins_tx").Scan(&n), "the caller's transaction ended")
			require.NoError(t, tx.Commit())
			assert.Equal(t, before, pidOf(t, db))
			sessionClean(t, db)
		})
	}
}

// TestCursorEarlyCloseCutPastDrainTimeout: in jsonstream's own
// transaction, a batch in flight that cannot be read off within the drain
// timeout (CloseAuto), or any batch in flight under CloseCut, is cut:
// the connection is closed at once and the observer hears of a cut, not
// of a closed cursor. The pool then serves the next query on a new
// backend.
func TestCursorEarlyCloseCutPastDrainTimeout(t *testing.T) {
	needRowsTable(t)
	db := openCursorPG(t, "jsonstream_fetch_size=50000 jsonstream_drain_timeout=1ms")
	for _, mode := range []CloseMode{CloseAuto, CloseCut} {
		t.Run(mode.String(), func(t *testing.T) {
			before := pidOf(t, db)
			rec := &recorder{}
			rows, err := db.Query(bigQuery, bigRows, mustStream(t, WithCloseMode(mode), WithObserver(rec)))
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())
			end := rec.ended(t)
			assert.Equal(t, ModeCursor, end.Mode)
			assert.True(t, end.ConnCut, "EventEnded.ConnCut")
			assert.Equal(t, OutcomeCut, end.Outcome)
			assert.NotEqual(t, before, pidOf(t, db), "the connection went back to the pool")
		})
	}
}

// TestCursorFailedStreamEndsPromptlyUnderCloseDrain: a stream that failed
// (Cancel) on a stalled network ends within the drain timeout even under
// CloseDrain, whose Close would otherwise wait as long as the server
// takes: a failed stream is ended as under CloseAuto, and the batch in
// flight is cut.
func TestCursorFailedStreamEndsPromptlyUnderCloseDrain(t *testing.T) {
	needRowsTable(t)
	p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", pgtest.Shared(t).Port()))
	db := openDSN(t, DriverName, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable jsonstream_fetch_size=200000 jsonstream_close=drain jsonstream_drain_timeout=100ms", p.port()))
	db.SetMaxOpenConns(1)
	require.NoError(t, db.Ping())
	s := mustStream(t)
	rows, err := db.Query(bigQuery, bigRows, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	p.stalled.Store(true) // mid-batch: 23 MB on their way
	start := time.Now()
	require.NoError(t, s.Cancel())
	done := make(chan error, 1)
	go func() {
		for rows.Next() {
		}
		err := rows.Err()
		_ = rows.Close()
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("Next and Close returned %v after Cancel (drain timeout 100ms)", time.Since(start))
		assert.ErrorIs(t, err, ErrCanceled)
		assert.Less(t, time.Since(start), 2*time.Second)
	case <-time.After(10 * time.Second):
		p.close() // frees the stuck read, so the test fails instead of hanging
		t.Fatalf("a canceled stream under CloseDrain waits on a stalled network (then: %v)", <-done)
	}
}

// A failure frees the server at once, from its own goroutine, while the
// consumer is away: not in Next, as a consumer that paused the stream
// while it sends the rows it has is (the README's send example).

// serverReleased waits until backend pid holds no transaction and no
// snapshot (idle, backend_xmin NULL), or is gone: what a long pause must
// not hold back from VACUUM.
func serverReleased(t *testing.T, monitor *sql.DB, pid int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var state sql.NullString
		var holdsXmin bool
		err := monitor.QueryRow(`SELECT state, backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&state, &holdsXmin)
		if err == sql.ErrNoRows {
			return true
		}
		require.NoError(t, err)
		return state.String == "idle" && !holdsXmin
	}, 2*time.Second, 5*time.Millisecond, "backend %d still holds its transaction or snapshot", pid)
}

func TestFailureFreesServerWhileConsumerAway(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		end  func(*Stream)
		want error
	}{
		{"pause timeout", []Option{WithPauseTimeout(100 * time.Millisecond)}, func(*Stream) {}, ErrPauseTimeout},
		{"cancel", nil, func(s *Stream) { require.NoError(t, s.Cancel()) }, ErrCanceled},
	} {
		for _, mode := range streamModes {
			t.Run(tc.name+"/mode="+mode, func(t *testing.T) {
				db := openPG(t, DriverName, mode)
				monitor := openPG(t, "postgres", "")
				conn, pid := backend(t, db)
				// The failure's bound on reading off the batch in flight and
				// ending the cursor is the drain timeout: one long enough for
				// a loaded machine, so that the connection is kept.
				s := mustStream(t, append(tc.opts, WithDrainTimeout(2*time.Second))...)
				rows, err := conn.QueryContext(context.Background(), bigQuery, bigRows, s)
				require.NoError(t, err)
				for i := 0; i < 20; i++ {
					require.True(t, rows.Next())
				}
				require.NoError(t, s.Pause())
				// The consumer is away: it calls neither Next nor Close.
				tc.end(s)
				serverReleased(t, monitor, pid)
				assert.Equal(t, Failed, s.State())

				assert.False(t, rows.Next())
				assert.ErrorIs(t, rows.Err(), tc.want)
				require.NoError(t, rows.Close())
				if mode != singleDSN {
					assert.Equal(t, pid, pidOf(t, conn), "cursor and portal modes keep the connection")
					sessionClean(t, conn)
				}
			})
		}
	}
}

// TestReleaseWhileConsumerReads: Cancel from another goroutine while the
// consumer reads as fast as it can. Whoever is on the wire ends the
// cursor; the stream fails with ErrCanceled, the session is clean and the
// connection kept (a drain timeout long enough for a loaded machine, so
// that no batch in flight is cut).
func TestReleaseWhileConsumerReads(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=7")
	conn, pid := backend(t, db)
	for i := 0; i < 50; i++ {
		s := mustStream(t, WithDrainTimeout(2*time.Second))
		rows, err := conn.QueryContext(context.Background(), bigQuery, 100_000, s)
		require.NoError(t, err)
		go func() {
			time.Sleep(time.Duration(i%5) * time.Millisecond)
			_ = s.Cancel()
		}()
		for rows.Next() {
		}
		assert.ErrorIs(t, rows.Err(), ErrCanceled)
		require.NoError(t, rows.Close())
		assert.Equal(t, pid, pidOf(t, conn))
		sessionClean(t, conn)
	}
}

// TestCancelReturnsAtOnce: Cancel does not wait for the cursor's end,
// not even in the caller's transaction, where ending it means reading off
// a batch in flight of any size.
func TestCancelReturnsAtOnce(t *testing.T) {
	ctx := context.Background()
	db := openCursorPG(t, "")
	const q = "SELECT g, repeat('x', 200) FROM generate_series(1, 3000000) g"
	for _, inTx := range []bool{false, true} {
		t.Run(map[bool]string{false: "autocommit", true: "BeginTx"}[inTx], func(t *testing.T) {
			s := mustStream(t, WithFetchSize(3_000_000))
			var rows *sql.Rows
			var tx *sql.Tx
			var err error
			if inTx {
				tx, err = db.BeginTx(ctx, nil)
				require.NoError(t, err)
				rows, err = tx.QueryContext(ctx, q, s)
			} else {
				rows, err = db.QueryContext(ctx, q, s)
			}
			require.NoError(t, err)
			require.True(t, rows.Next())
			start := time.Now()
			require.NoError(t, s.Cancel())
			took := time.Since(start)
			_ = rows.Close()
			if tx != nil {
				require.NoError(t, tx.Rollback())
			}
			assert.Less(t, took, 500*time.Millisecond, "Cancel waited for the stream")
			sessionClean(t, db)
		})
	}
}

// TestLateReleaseLeavesNextQueryAlone: a failure whose release comes
// after the consumer's Close handed the connection to another query (the
// failing goroutine held up meanwhile: here by the pauser's lock, as a
// Stats or Pause on another goroutine may) leaves that query's socket
// alone: its CloseAuto still cuts at the drain timeout.
func TestLateReleaseLeavesNextQueryAlone(t *testing.T) {
	ctx := context.Background()
	db := openCursorPG(t, "") // one connection
	s := mustStream(t, WithFetchSize(FetchAuto))
	rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	require.NoError(t, s.Resume())
	p := s.bound.Load().pause.Load()
	p.mu.Lock() // Cancel stops in endPause, after the stream failed
	canceled := make(chan struct{})
	go func() { _ = s.Cancel(); close(canceled) }()
	for s.State() != Failed {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, rows.Close()) // the cursor closed, the connection back in the pool

	next := mustStream(t, WithFetchSize(0), WithDrainTimeout(300*time.Millisecond))
	rows2, err := db.QueryContext(ctx, "SELECT g, repeat('x', 300) FROM generate_series(1, 4000000) g", next)
	require.NoError(t, err)
	require.True(t, rows2.Next())
	go func() {
		time.Sleep(100 * time.Millisecond) // rows2's drain has armed its deadline
		p.mu.Unlock()                      // the first stream's release runs now
	}()
	start := time.Now()
	_ = rows2.Close()
	took := time.Since(start)
	<-canceled
	assert.Less(t, took, 2*time.Second, "the drain's deadline was cleared by another stream's release")
}

// pauseOutcome pauses a stream of bigQuery after a few rows for pause,
// resumes it and reads on: it returns how many more rows came and the
// error that ended the stream, if any.
func pauseOutcome(t *testing.T, db *sql.DB, pause time.Duration, more int) (int, error) {
	t.Helper()
	s := mustStream(t)
	rows, err := db.QueryContext(context.Background(), bigQuery, bigRows, s)
	require.NoError(t, err)
	defer rows.Close()
	for i := 0; i < 10; i++ {
		require.True(t, rows.Next())
	}
	require.NoError(t, s.Pause())
	time.Sleep(pause)
	require.NoError(t, s.Resume())
	n := 0
	for n < more && rows.Next() {
		n++
	}
	return n, rows.Err()
}

// TestServerTimeoutsDuringPauseByMode: what PostgreSQL's timeouts do to a
// stream paused longer than they allow, in each stream mode.
//
//   - statement_timeout: in the single-statement mode the statement is
//     running while paused (the server blocked on its write), so the
//     timeout cancels it: after Resume the stream ends with 57014
//     query_canceled once the server's buffered rows are read. In cursor
//     mode each FETCH is a statement of its own, and none runs while
//     paused: the stream goes on.
//   - idle_in_transaction_session_timeout: a cursor-backed stream is idle
//     in its transaction while paused between batches, so the server ends
//     the session: after Resume the next FETCH fails (lib/pq reports
//     driver.ErrBadConn, which jsonstream's error wraps and explains) and
//     the pool replaces the connection. The single-statement mode is not idle
//     while paused: the stream goes on.
func TestServerTimeoutsDuringPauseByMode(t *testing.T) {
	needRowsTable(t)
	const pause = 600 * time.Millisecond
	for _, tc := range []struct {
		mode, setting string
		wantState     string // "" for a stream that goes on
	}{
		{"", "statement_timeout=200", "57014"},
		{"jsonstream_fetch_size=auto", "statement_timeout=200", ""},
		{"", "idle_in_transaction_session_timeout=200", ""},
		{"jsonstream_fetch_size=auto", "idle_in_transaction_session_timeout=200", "session ended"},
	} {
		t.Run(tc.mode+" "+tc.setting, func(t *testing.T) {
			db := openPG(t, DriverName, tc.mode+" options='-c "+tc.setting+"'")
			db.SetMaxOpenConns(1)
			n, err := pauseOutcome(t, db, pause, 200_000)
			t.Logf("after Resume: %d rows, then %v", n, err)
			if tc.wantState == "" {
				require.NoError(t, err)
				assert.Equal(t, 200_000, n, "the stream goes on")
			} else {
				require.Error(t, err)
				if tc.wantState == "session ended" {
					// The pool discards the connection, and the server's reason
					// stays reachable.
					assert.ErrorIs(t, err, driver.ErrBadConn)
					var ended *SessionEndedError
					require.ErrorAs(t, err, &ended)
					var pqErr *pq.Error
					require.ErrorAs(t, err, &pqErr)
					assert.Equal(t, "25P03", string(pqErr.Code), "idle_in_transaction_session_timeout")
					assert.Equal(t, "FATAL", pqErr.Severity)
					assert.Contains(t, pqErr.Message, "idle-in-transaction timeout")
				} else {
					assert.Equal(t, tc.wantState, sqlState(err), "%v", err)
				}
			}
			var one int
			require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool recovers")
		})
	}
}

// Cursor mode sends the caller's query inside a DECLARE of its own. The
// promise: for any query text, the statements that run are the ones
// lib/pq runs for the same text, or the query fails and nothing runs.

// smuggleTexts are query texts that try to run a statement beside the
// DECLARE, and texts that only look like it.
var smuggleTexts = []string{
	"SELECT 1) ; DELETE FROM victim; SELECT (1",
	"SELECT 1) ; DELETE FROM victim; SELECT (1 --",
	"WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	"SELECT 1) ; WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	"SELECT 1)/*x*/;DELETE FROM victim;/*y*/SELECT (1",
	"SELECT '\\') ; DELETE FROM victim; SELECT (\\''",
	"SELECT '\\'); DELETE FROM victim; SELECT ('",
	"SELECT E'\\'); DELETE FROM victim; SELECT ('",
	"SELECT $$) ; DELETE FROM victim; SELECT ($$",
	"SELECT $a$) ; DELETE FROM victim; SELECT ($a$",
	"SELECT $ 1) ; DELETE FROM victim; SELECT (1",
	"SELECT \"x\") ; DELETE FROM victim; SELECT (\"y\"",
	"SELECT 1 -- ) ; DELETE FROM victim; SELECT (1\n",
	"SELECT /* ) ; DELETE FROM victim; SELECT ( */ 1",
	"SELECT /* /* */ ) ; DELETE FROM victim; SELECT ( */ 1",
	"SELECT 1; DELETE FROM victim",
	"DELETE FROM victim RETURNING x",
	"SELECT x FROM victim ORDER BY x",
	"SELECT 'a)' || $$b;$$ FROM victim",
	"SELEC 1",
	"SELECT (1",
	"SELECT 1)",
	"SELECT U&'\\0029'; DELETE FROM victim; SELECT ('",
	"SELECT 1 \\; DELETE FROM victim",
}

// victimState is what a run left in the victim table.
type victimState struct{ count, sum int64 }

// smuggleConn is one session with a temporary victim table: the same
// setup on a lib/pq connection and a jsonstream one.
type smuggleConn struct {
	conn *sql.Conn
}

func newSmuggleConn(t testing.TB, db *sql.DB) *smuggleConn {
	t.Helper()
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &smuggleConn{conn: conn}
}

// single is a Stream-free way to run the harness's own statements in the
// single-statement mode whatever the pool's mode.
func singleMode(t testing.TB) *Stream {
	s, err := NewStream(WithStreamMode(ModeSingle))
	require.NoError(t, err)
	return s
}

// reset puts the victim table back to three rows, outside any
// transaction.
func (s *smuggleConn) reset(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	_, _ = s.conn.ExecContext(ctx, "ROLLBACK")
	_, err := s.conn.ExecContext(ctx, `CREATE TEMP TABLE IF NOT EXISTS victim (x int);
		DELETE FROM victim; INSERT INTO victim VALUES (1), (2), (3)`)
	require.NoError(t, err)
}

func (s *smuggleConn) state(t testing.TB, args ...any) victimState {
	t.Helper()
	var st victimState
	require.NoError(t, s.conn.QueryRowContext(context.Background(),
		"SELECT count(*), coalesce(sum(x), 0) FROM victim", args...).Scan(&st.count, &st.sum))
	return st
}

// run runs query on q and reads all it returns; it reports the error.
func runQuery(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string) error {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	for {
		for rows.Next() {
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		_ = rows.Close()
		return err
	}
	return rows.Close()
}

// smuggleOracle runs query through lib/pq and through jsonstream's cursor
// mode in autocommit, in BeginTx and after Exec("BEGIN"), and requires of
// each jsonstream run that it left the victim table untouched, or, when
// it succeeded, as lib/pq left it; and that a run that left untouched what
// lib/pq changed failed, rather than leave out a statement in silence.
type smuggleOracle struct {
	pq, js *smuggleConn
}

func newSmuggleOracle(t testing.TB) *smuggleOracle {
	t.Helper()
	return newSmuggleOracleIn(t, "jsonstream_fetch_size=auto")
}

// newSmuggleOracleIn is newSmuggleOracle with jsonstream in the stream
// mode of the DSN fragment mode.
func newSmuggleOracleIn(t testing.TB, mode string) *smuggleOracle {
	t.Helper()
	pqDB := openPG(t, "postgres", "options='-c statement_timeout=5000'")
	jsDB := openPG(t, DriverName, mode+" options='-c statement_timeout=5000'")
	return &smuggleOracle{pq: newSmuggleConn(t, pqDB), js: newSmuggleConn(t, jsDB)}
}

func (o *smuggleOracle) check(t *testing.T, query string) {
	ctx := context.Background()
	o.pq.reset(t)
	untouched := o.pq.state(t)
	pqErr := runQuery(ctx, o.pq.conn, query)
	want := o.pq.state(t)
	o.pq.reset(t)

	judge := func(how string, err error, got victimState) {
		t.Helper()
		if got == untouched {
			if want != untouched {
				assert.Error(t, err, "%s: %q left out what lib/pq ran, and succeeded", how, query)
			}
			return
		}
		assert.NoError(t, err, "%s: %q changed the table and failed", how, query)
		assert.Equal(t, want, got, "%s: %q ran other statements than lib/pq (lib/pq: %v)", how, query, pqErr)
	}

	o.js.reset(t)
	err := runQuery(ctx, o.js.conn, query)
	judge("autocommit", err, o.js.state(t, singleMode(t)))

	o.js.reset(t)
	tx, txErr := o.js.conn.BeginTx(ctx, nil)
	require.NoError(t, txErr)
	err = runQuery(ctx, tx, query)
	var got victimState
	if stateErr := tx.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(x), 0) FROM victim", singleMode(t)).Scan(&got.count, &got.sum); stateErr != nil {
		got = untouched // the transaction failed: nothing it did stays
	}
	_ = tx.Rollback()
	judge("BeginTx", err, got)

	o.js.reset(t)
	_, txErr = o.js.conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, txErr)
	err = runQuery(ctx, o.js.conn, query)
	if stateErr := o.js.conn.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(x), 0) FROM victim", singleMode(t)).Scan(&got.count, &got.sum); stateErr != nil {
		got = untouched
	}
	_, _ = o.js.conn.ExecContext(ctx, "ROLLBACK")
	judge(`Exec("BEGIN")`, err, got)
}

func TestCursorRunsNoSmuggledStatement(t *testing.T) {
	o := newSmuggleOracle(t)
	for _, q := range smuggleTexts {
		t.Run(q, func(t *testing.T) { o.check(t, q) })
	}
}

// TestCursorSmugglingExamples pins the two texts of the report: lib/pq
// refuses them with a syntax error and nothing runs; so does cursor mode,
// with the same error, in autocommit, BeginTx and after Exec("BEGIN").
func TestCursorSmugglingExamples(t *testing.T) {
	o := newSmuggleOracle(t)
	ctx := context.Background()
	for _, q := range []string{
		"SELECT 1) ; DELETE FROM victim; SELECT (1",
		"SELECT 1) ; WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	} {
		t.Run(q, func(t *testing.T) {
			o.pq.reset(t)
			pqErr := runQuery(ctx, o.pq.conn, q)
			var want *pq.Error
			require.True(t, errors.As(pqErr, &want), "lib/pq: %v", pqErr)
			o.js.reset(t)
			before := o.js.state(t, singleMode(t))
			err := runQuery(ctx, o.js.conn, q)
			var got *pq.Error
			require.True(t, errors.As(err, &got), "%v", err)
			assert.Equal(t, want.Code, got.Code)
			assert.Equal(t, want.Message, got.Message)
			assert.Equal(t, want.Position, got.Position)
			assert.NotErrorIs(t, err, ErrCursorQuery, "a syntax error is the server's")
			assert.Equal(t, before, o.js.state(t, singleMode(t)), "nothing ran")
		})
	}
}

// TestCursorSyntaxErrorIsTheServers: a query with a syntax error gets the
// server's error, as through lib/pq, not ErrCursorQuery.
func TestCursorSyntaxErrorIsTheServers(t *testing.T) {
	pqDB := openPG(t, "postgres", "")
	jsDB := openCursorPG(t, "jsonstream_fetch_size=auto")
	for _, q := range []string{"SELEC 1", "SELECT 1 +", "SELECT (1", "SELECT 'open"} {
		t.Run(q, func(t *testing.T) {
			_, pqErr := pqDB.Query(q)
			want, ok := pqErr.(*pq.Error) //nolint:errorlint // lib/pq returns it unwrapped
			require.True(t, ok, "%v", pqErr)
			_, err := jsDB.Query(q)
			got, ok := err.(*pq.Error) //nolint:errorlint // passed on unwrapped
			require.True(t, ok, "%T %v", err, err)
			assert.Equal(t, *want, *got)
			sessionClean(t, jsDB)
		})
	}
}

// FuzzCursorStatements mutates query texts (parentheses, comments,
// quotes, dollar quotes, semicolons) and asks the server what ran.
// TestPortalRunsNoSmuggledStatement: the same texts through the default
// mode, which runs reads as portal streams: a text of several statements
// goes to lib/pq whole, and one the scan is unsure of too; a portal's
// Parse takes a single statement.
func TestPortalRunsNoSmuggledStatement(t *testing.T) {
	o := newSmuggleOracleIn(t, "")
	for _, q := range smuggleTexts {
		t.Run(q, func(t *testing.T) { o.check(t, q) })
	}
}

// FuzzPortalStatements is FuzzCursorStatements in the default mode.
func FuzzPortalStatements(f *testing.F) {
	for _, q := range smuggleTexts {
		f.Add(q)
	}
	o := newSmuggleOracleIn(f, "")
	f.Fuzz(func(t *testing.T, query string) {
		if len(query) > 300 {
			return
		}
		o.check(t, query)
	})
}

func FuzzCursorStatements(f *testing.F) {
	for _, q := range smuggleTexts {
		f.Add(q)
	}
	o := newSmuggleOracle(f)
	f.Fuzz(func(t *testing.T, query string) {
		if len(query) > 300 {
			return
		}
		o.check(t, query)
	})
}

// TestCursorSmugglingInSJIS: in a session whose client_encoding is SJIS
// (lib/pq checks it only at connect time), byte 0x5C can be the second
// byte of a character, which the server does not read as a backslash.
func TestCursorSmugglingInSJIS(t *testing.T) {
	ctx := context.Background()
	for _, q := range []string{
		"SELECT E'\x95\\' ) ; DELETE FROM victim ; SELECT ( $$'--$$",
		"SELECT '\x95\\\\' ) ; DELETE FROM victim ; SELECT ( '",
	} {
		t.Run(q, func(t *testing.T) {
			js := newSmuggleConn(t, openPG(t, DriverName, "jsonstream_fetch_size=auto"))
			js.reset(t)
			for _, set := range []string{"SET client_encoding TO 'SJIS'", "SET standard_conforming_strings TO off"} {
				_, err := js.conn.ExecContext(ctx, set)
				require.NoError(t, err)
				_ = runQuery(ctx, js.conn, q)
			}
			_, err := js.conn.ExecContext(ctx, "RESET client_encoding; RESET standard_conforming_strings")
			require.NoError(t, err)
			assert.Equal(t, victimState{3, 6}, js.state(t, singleMode(t)), "a statement beside the DECLARE ran")
		})
	}
}

// TestCursorDeclareSyntaxErrorInCallersTx: in the caller's transaction a
// query that DECLARE refuses with a syntax error (SELECT … INTO) fails
// with that error, pointing into the caller's query: the failed DECLARE
// aborted the transaction, so the query is not parsed again there.
func TestCursorDeclareSyntaxErrorInCallersTx(t *testing.T) {
	ctx := context.Background()
	db := openCursorPG(t, "jsonstream_fetch_size=5")
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.QueryContext(ctx, "SELECT 1 INTO cursor_mutation_into")
	require.Error(t, err)
	var pqErr *pq.Error
	require.True(t, errors.As(err, &pqErr), "%T %v", err, err)
	assert.Equal(t, "42601", string(pqErr.Code), "the DECLARE's own error: %v", err)
	assert.NotEmpty(t, pqErr.Position)
	require.NoError(t, tx.Rollback())
	sessionClean(t, db)
}

// TestCursorSessionEndedBetweenBatchesNeverReused: when the server ended
// the session while the stream waited between batches, the connection
// serves nothing more: the next statement on it fails with ErrConnCut
// rather than reaching a dead session.
func TestCursorSessionEndedBetweenBatchesNeverReused(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=5")
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)
	s := mustStream(t)
	rows, err := conn.QueryContext(context.Background(), "SELECT g FROM generate_series(1, 100) g", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	var ok bool
	require.NoError(t, monitor.QueryRow("SELECT pg_terminate_backend($1)", pid).Scan(&ok))
	require.True(t, ok)
	require.Eventually(t, func() bool { _, _, alive := activity(t, monitor, pid); return !alive },
		10*time.Second, 5*time.Millisecond)
	require.NoError(t, s.Resume())
	for rows.Next() {
	}
	var ended *SessionEndedError
	require.ErrorAs(t, rows.Err(), &ended)
	_ = rows.Close()

	var one int
	err = conn.QueryRowContext(context.Background(), "SELECT 1").Scan(&one)
	assert.ErrorIs(t, err, ErrConnCut)
}
