package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// Tests that pin cursor mode's endings against the server (issue 17,
// "Tests that hold the new code"): each fails when the code it names is
// changed.

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

// stallDialer dials connections that stop passing the client's writes on
// once stalled: the server never gets them and never answers, while
// reads keep their deadlines.
type stallDialer struct {
	mu    sync.Mutex // guards conns
	conns []*stallConn
}

func (d *stallDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialTimeout(network, address, 0)
}

func (d *stallDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	sc := &stallConn{Conn: c, swallowed: make(chan struct{})}
	d.mu.Lock()
	d.conns = append(d.conns, sc)
	d.mu.Unlock()
	return sc, nil
}

func (d *stallDialer) last() *stallConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[len(d.conns)-1]
}

type stallConn struct {
	net.Conn
	stalled   atomic.Bool
	once      sync.Once
	swallowed chan struct{} // closed by the first write swallowed
}

func (c *stallConn) Write(b []byte) (int, error) {
	if c.stalled.Load() {
		c.once.Do(func() { close(c.swallowed) })
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// TestCursorContextEndDuringFinalCommitFreesNext: the last batch read, the
// stream's Next commits jsonstream's transaction; when the network stalls
// under that COMMIT and the context ends, Next returns within the drain
// timeout with the context's error.
func TestCursorContextEndDuringFinalCommitFreesNext(t *testing.T) {
	const drain = 100 * time.Millisecond
	d := &stallDialer{}
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
	sc.stalled.Store(true)
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
	fd := &faultDialer{}
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
	fail := func(d time.Time) bool { return !d.IsZero() && time.Until(d) > 500*time.Millisecond }
	fd.armed.Store(&fail)
	err = rows.Close()
	fd.armed.Store(nil)
	sock := fd.last()
	require.Equal(t, int64(1), sock.faults.Load(), "the fault was not injected")
	assert.EqualError(t, err, batchErr.Error(), "Close lost the batch's error")
	assert.False(t, errors.Is(err, errDeadlineFault), "the socket's error instead of the batch's")
	assert.True(t, sock.closed.Load(), "the connection was not cut")
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
