package jsonstream

import (
	"context"
	"database/sql"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
