package jsonstream

import (
	"context"
	"database/sql"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStatementWhileRowsOpen: a statement or a query sent on a connection
// whose rows are open gets lib/pq's "already a query being processed"
// error in every mode, the stream goes on, and once the rows are closed the connection serves the next
// statement in every mode that keeps it (the single statement's early
// Close cuts it).
func TestStatementWhileRowsOpen(t *testing.T) {
	needRowsTable(t)
	busy := func(next bool) func(t *testing.T, db *sql.DB) string {
		return func(t *testing.T, db *sql.DB) string {
			ctx := context.Background()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			rows, err := conn.QueryContext(ctx, "SELECT g FROM jsonstream_test_rows ORDER BY g")
			require.NoError(t, err)
			require.True(t, rows.Next())
			_, execErr := conn.ExecContext(ctx, "SELECT 1")
			require.Error(t, execErr)
			var n int
			queryErr := conn.QueryRowContext(ctx, "SELECT 1").Scan(&n)
			require.Error(t, queryErr)
			require.True(t, rows.Next(), "the stream goes on")
			require.NoError(t, rows.Close())
			if next {
				require.NoError(t, conn.QueryRowContext(ctx, "SELECT 2").Scan(&n))
				assert.Equal(t, 2, n)
			}
			return execErr.Error() + "; " + queryErr.Error()
		}
	}
	bothIn(t, []string{"jsonstream_fetch_size=auto", "jsonstream_fetch_size=100", ""}, busy(true))
	bothIn(t, []string{singleDSN}, busy(false))
}

// TestStatementDuringRelease: a Cancel ends the server's side of the
// stream from a goroutine of the stream's own (release) while the rows
// stay open. A statement sent on the same connection before that end is
// over gets lib/pq's "already a query being processed" error: it never
// shares the connection with the end. Here the end is held where it
// clears its read deadline, past the server's last reply; once it goes
// on, the next statement runs.
func TestStatementDuringRelease(t *testing.T) {
	needRowsTable(t)
	for name, open := range map[string]func(t *testing.T, d *fakeDialer) *sql.DB{
		"portal": openDialed,
		"cursor": func(t *testing.T, d *fakeDialer) *sql.DB { return openCursorDialed(t, d, WithFetchSize(100)) },
	} {
		t.Run(name, func(t *testing.T) {
			d := &fakeDialer{}
			db := open(t, d)
			ctx := context.Background()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			s := mustStream(t)
			rows, err := conn.QueryContext(ctx, "SELECT g FROM jsonstream_test_rows ORDER BY g", s)
			require.NoError(t, err)
			defer rows.Close()
			require.True(t, rows.Next())

			held, let := make(chan struct{}), make(chan struct{})
			var once, letOnce sync.Once
			letGo := func() { letOnce.Do(func() { close(let) }) }
			defer letGo()
			d.last().setOnDeadline(func(deadline time.Time) error {
				if deadline.IsZero() {
					once.Do(func() {
						close(held)
						<-let
					})
				}
				return nil
			})
			require.NoError(t, s.Cancel())
			select {
			case <-held:
			case <-time.After(10 * time.Second):
				t.Fatal("the end never cleared its read deadline")
			}
			// Without the guard the statement runs beside the held end;
			// the end goes on after 2 s at the latest, so that a
			// statement that waits for it cannot hang the test either.
			time.AfterFunc(2*time.Second, letGo)
			var n int
			err = conn.QueryRowContext(ctx, "SELECT 3").Scan(&n)
			letGo()
			require.Error(t, err, "a statement ran while the end held the connection")
			assert.Equal(t, errQueryInProgress.Error(), err.Error())

			for give := time.Now().Add(10 * time.Second); time.Now().Before(give); runtime.Gosched() {
				err = conn.QueryRowContext(ctx, "SELECT 4").Scan(&n)
				if err == nil || err.Error() != errQueryInProgress.Error() {
					break
				}
			}
			require.NoError(t, err)
			assert.Equal(t, 4, n)
			assert.False(t, rows.Next())
			assert.ErrorIs(t, rows.Err(), ErrCanceled)
			require.NoError(t, rows.Close())
		})
	}
}
