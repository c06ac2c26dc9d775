package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
