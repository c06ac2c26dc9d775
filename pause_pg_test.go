package jsonstream

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// bigQuery streams the first $1 rows of the rows table, about 110 bytes
// each: far more than the socket buffers hold, so a client that stops
// reading makes the server wait. A table rather than generate_series,
// which materializes its whole result before the first row.
const bigQuery = `SELECT g, pad FROM jsonstream_test_rows WHERE g <= $1 ORDER BY g`

// bigRows is how many rows the rows table holds.
const bigRows = 2_000_000

var rowsTable struct {
	once sync.Once
	err  error
}

// inOrder returns a reader of bigQuery's rows that requires every row
// once, in order, and a function that gives the next row number it wants.
func inOrder(t *testing.T, rows *sql.Rows) (read func(k int), next func() int) {
	want := 1
	read = func(k int) {
		for i := 0; i < k && rows.Next(); i++ {
			var g int
			var pad string
			require.NoError(t, rows.Scan(&g, &pad))
			require.Equal(t, want, g, "every row once, in order")
			want++
		}
	}
	return read, func() int { return want }
}

// TestPausedServerWaitsOnClient: while paused, nothing is read and the
// server waits: on the client's socket in the single-statement mode
// (ClientWrite), idle in its transaction between batches in cursor mode.
// After Resume every row comes once, in order.
func TestPausedServerWaitsOnClient(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			// Enough rows to fill the socket buffers of the single
			// statement; a cursor's server waits after each batch.
			n := 200_000
			if mode != singleDSN {
				n = 5_000
			}
			db := openPG(t, DriverName, mode)
			monitor := openPG(t, "postgres", "")
			conn, pid := backend(t, db)

			s := mustStream(t)
			rows, err := conn.QueryContext(context.Background(), bigQuery, n, s)
			require.NoError(t, err)
			defer rows.Close()
			read, next := inOrder(t, rows)
			read(1000)
			require.NoError(t, s.Pause())

			waiting := func() bool {
				state, we, _ := activity(t, monitor, pid)
				switch mode {
				case singleDSN:
					return we == "ClientWrite"
				case "":
					// Its Executes done, the server waits for the next.
					return state == "active" && we == "ClientRead"
				}
				return state == "idle in transaction"
			}
			require.Eventually(t, waiting, 5*time.Second, 20*time.Millisecond, "the server should be waiting on the client")
			before := s.Stats()
			time.Sleep(300 * time.Millisecond)
			after := s.Stats()
			assert.Equal(t, int64(1000), before.Rows)
			assert.Equal(t, before.Rows, after.Rows, "rows delivered while paused")
			assert.Equal(t, before.Bytes, after.Bytes)
			assert.True(t, waiting(), "still waiting on the client")
			assert.GreaterOrEqual(t, after.PausedNow, 300*time.Millisecond)

			require.NoError(t, s.Resume())
			read(n)
			require.NoError(t, rows.Err())
			assert.Equal(t, n+1, next())
			assert.Equal(t, Complete, s.State())
		})
	}
}

// failWhilePaused pauses a large stream, lets end() end the pause, and
// checks the contract in each stream mode: Next returns want promptly and
// the server stops the query. The single-statement mode cuts the
// connection, which never serves another query; cursor mode closes the
// cursor and keeps the connection, its session clean.
func failWhilePaused(t *testing.T, opts []Option, ctx func() context.Context, end func(*Stream), want error) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			monitor := openPG(t, "postgres", "")
			conn, pid := backend(t, db)

			s := mustStream(t, opts...)
			rows, err := conn.QueryContext(ctx(), bigQuery, bigRows, s)
			require.NoError(t, err)
			defer rows.Close()
			for i := 0; i < 10; i++ {
				require.True(t, rows.Next())
			}
			require.NoError(t, s.Pause())
			end(s)
			start := time.Now()
			assert.False(t, rows.Next())
			t.Logf("Next returned %v after the pause ended", time.Since(start))
			assert.ErrorIs(t, rows.Err(), want)
			assert.Equal(t, Failed, s.State())
			require.NoError(t, rows.Close())
			requireBackendStops(t, monitor, pid)

			if mode != singleDSN {
				assert.Equal(t, pid, pidOf(t, conn), "cursor and portal modes keep the connection")
				sessionClean(t, conn)
				return
			}
			// The connection was cut, so database/sql must not hand it out again.
			_ = conn.Close()
			var other int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&other))
			assert.NotEqual(t, pid, other, "a connection cut mid-result went back to the pool")
		})
	}
}

func TestPauseTimeoutStopsServerQuery(t *testing.T) {
	failWhilePaused(t, []Option{WithPauseTimeout(200 * time.Millisecond)}, context.Background,
		func(*Stream) {}, ErrPauseTimeout)
}

func TestCancelStopsServerQuery(t *testing.T) {
	failWhilePaused(t, nil, context.Background, func(s *Stream) {
		time.AfterFunc(100*time.Millisecond, func() { _ = s.Cancel() })
	}, ErrCanceled)
}

func TestContextEndWhilePausedStopsServerQuery(t *testing.T) {
	failWhilePaused(t, nil, func() context.Context {
		// Long enough for the query to start on a loaded machine: the
		// deadline must find the stream paused, not starting.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		t.Cleanup(cancel)
		return ctx
	}, func(*Stream) {}, context.DeadlineExceeded)
}

func TestPauseTimeoutFromDSN(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_pause_timeout=100ms")
	s := mustStream(t)
	rows, err := db.Query(bigQuery, 1_000_000, s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	assert.False(t, rows.Next())
	assert.ErrorIs(t, rows.Err(), ErrPauseTimeout)
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool stays healthy")
}

// pausedInTx starts bigQuery in a transaction begun with txCtx, reads one
// row, pauses, and calls Next in another goroutine, where it blocks.
func pausedInTx(t *testing.T, txCtx context.Context, db *sql.DB) (*sql.Tx, *sql.Rows, *Stream, string, <-chan nextResult) {
	t.Helper()
	tx, err := db.BeginTx(txCtx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	query, marker := markedQuery(bigQuery)
	s := mustStream(t)
	// More than the socket buffers hold, and few enough that a Close,
	// which drains inside a transaction, is quick.
	rows, err := tx.Query(query, 200_000, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	next := nextAsync(rows)
	requireBlocked(t, next)
	return tx, rows, s, marker, next
}

// returnsAsync runs f in a goroutine and reports its error on the channel.
func returnsAsync(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// TestEndingTxWhileNextPaused: database/sql holds the rows' lock during
// Next, so Rollback, Commit and rows.Close from another goroutine wait
// for a paused Next; the transaction's own cancellation is on a context
// no driver sees. Resume, Cancel or the context given to BeginTx end the
// wait.
func TestEndingTxWhileNextPaused(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	monitor := monitorDB(t)
	for name, end := range map[string]func(tx *sql.Tx, rows *sql.Rows) error{
		"Rollback":   func(tx *sql.Tx, _ *sql.Rows) error { return tx.Rollback() },
		"Commit":     func(tx *sql.Tx, _ *sql.Rows) error { return tx.Commit() },
		"rows.Close": func(_ *sql.Tx, rows *sql.Rows) error { return rows.Close() },
	} {
		t.Run(name+" waits for Resume", func(t *testing.T) {
			tx, rows, s, _, next := pausedInTx(t, context.Background(), db)
			ended := returnsAsync(func() error { return end(tx, rows) })
			select {
			case err := <-ended:
				t.Fatalf("%s returned while Next was paused: %v", name, err)
			case <-time.After(300 * time.Millisecond):
			}
			require.NoError(t, s.Resume())
			requireWithin(t, next, 5*time.Second)
			select {
			case err := <-ended:
				t.Logf("%s after Resume: %v", name, err)
			case <-time.After(5 * time.Second):
				t.Fatalf("%s still waits after Resume", name)
			}
		})
	}
	t.Run("Cancel ends the wait", func(t *testing.T) {
		tx, rows, s, marker, next := pausedInTx(t, context.Background(), db)
		rolledBack := returnsAsync(tx.Rollback)
		require.NoError(t, s.Cancel())
		r := requireWithin(t, next, wake)
		assert.ErrorIs(t, r.err, ErrCanceled)
		select {
		case err := <-rolledBack:
			t.Logf("Rollback after Cancel: %v", err)
		case <-time.After(time.Second):
			t.Fatal("Rollback still waits after Cancel")
		}
		_ = rows.Close()
		requireServerQueryStops(t, monitor, marker)
	})
	t.Run("canceling the BeginTx context ends the wait", func(t *testing.T) {
		txCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tx, rows, s, marker, next := pausedInTx(t, txCtx, db)
		cancel()
		r := requireWithin(t, next, wake)
		assert.False(t, r.ok)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Equal(t, Failed, s.State())
		select {
		case err := <-returnsAsync(tx.Rollback):
			t.Logf("Rollback after the context ended: %v", err)
		case <-time.After(time.Second):
			t.Fatal("Rollback still waits after the context ended")
		}
		_ = rows.Close()
		requireServerQueryStops(t, monitor, marker)
		var one int
		require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
	})
}
