package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
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

// TestCallsWhileStreamOpen: on a connection whose reads are portal
// streams, a stream holds the connection as lib/pq's rows would, whether
// it is a portal, or a cursor or a single statement that a Stream asked
// for: a query, an Exec, a Prepare, a Begin and a Ping sent meanwhile get
// lib/pq's error (a query does not start a portal beside the cursor's
// batch or lib/pq's result, which lib/pq may have read ahead), a
// statement's Close waits for the next statement, and the stream reads
// every row.
func TestCallsWhileStreamOpen(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	for name, opts := range streamOptions {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			conn := pinnedConn(t, db)
			st, err := conn.PrepareContext(ctx, "SELECT 7")
			require.NoError(t, err)
			rows, _ := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows WHERE g <= 100000 ORDER BY g", opts...)
			var n int
			refused := func(what string, err error) {
				t.Helper()
				require.Error(t, err, what)
				assert.Equal(t, errQueryInProgress.Error(), err.Error(), what)
			}
			refused("QueryRow", conn.QueryRowContext(ctx, "SELECT 1").Scan(&n))
			_, err = conn.ExecContext(ctx, "SELECT 1")
			refused("Exec", err)
			_, err = conn.PrepareContext(ctx, "SELECT 1")
			refused("Prepare", err)
			_, err = conn.BeginTx(ctx, nil)
			refused("BeginTx", err)
			refused("Ping", conn.PingContext(ctx))
			require.NoError(t, st.Close())
			readsOnThenUnprepared(t, conn, rows, 100_000)
		})
	}
}

// TestStatementDuringRelease: a Cancel ends the server's side of the
// stream from a goroutine of the stream's own (release) while the rows
// stay open. A statement sent on the same connection before that end is
// over gets lib/pq's "already a query being processed" error: it never
// shares the connection with the end; a prepared statement's Close is
// carried out by the next statement. Here the end is held where it
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
			ctx := context.Background()
			conn := pinnedConn(t, open(t, d))
			st, err := conn.PrepareContext(ctx, "SELECT 7")
			require.NoError(t, err)
			rows, s := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows ORDER BY g")

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
			// A statement's Close waits for the wire: the next statement
			// closes it.
			require.NoError(t, st.Close())
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
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n))
			assert.Zero(t, n, "the statement closed during the end is still prepared")
			assert.False(t, rows.Next())
			assert.ErrorIs(t, rows.Err(), ErrCanceled)
			require.NoError(t, rows.Close())
		})
	}
}

// TestStmtCloseWhileStreamHoldsTheWire: the Close of a statement prepared
// on a sql.Conn, while a portal stream of that statement holds the wire,
// does not send lib/pq's Close into the stream's exchange (whose replies
// lib/pq would read as its own, and fail the connection): the stream
// reads every row, and the next statement closes the statement on the
// server.
func TestStmtCloseWhileStreamHoldsTheWire(t *testing.T) {
	needRowsTable(t)
	ctx := context.Background()
	conn := pinnedConn(t, openPG(t, DriverName, ""))
	st, err := conn.PrepareContext(ctx, "SELECT g FROM jsonstream_test_rows WHERE g <= $1 ORDER BY g")
	require.NoError(t, err)
	rows, err := st.QueryContext(ctx, 100_000)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, st.Close())
	readsOnThenUnprepared(t, conn, rows, 100_000)
}

// readsOnThenUnprepared requires rows, whose first row was read, to read
// all their want rows and close; then the next statement on conn to find
// no statement prepared, the Close of one having waited for it.
func readsOnThenUnprepared(t *testing.T, conn *sql.Conn, rows *sql.Rows, want int) {
	t.Helper()
	got := 1
	for rows.Next() {
		got++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, want, got)
	require.NoError(t, rows.Close())
	var n int
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT count(*) FROM pg_prepared_statements").Scan(&n))
	assert.Zero(t, n, "the statement closed while the stream held the connection is still prepared")
}

// TestLateCloseLeavesTheSocketAlone: the Close of a stream that a Cancel
// ended already (release), called late while another party drains on the
// same connection under a read deadline of its own, does not touch that
// deadline: the other party's end clears it, and a statement after it
// does not time out. The late-closed stream is a portal or a cursor; the
// other party, a later portal stream's owed end (its Sync timer) or its
// release.
func TestLateCloseLeavesTheSocketAlone(t *testing.T) {
	needRowsTable(t)
	withOwedEndMaxAge(t, time.Minute)
	oldDelay := owedSyncDelay
	owedSyncDelay = 500 * time.Millisecond
	t.Cleanup(func() { owedSyncDelay = oldDelay })
	const q = "SELECT g FROM jsonstream_test_rows ORDER BY g"

	for _, tc := range []struct {
		name, other string
		first       []Option // the late-closed stream's
	}{
		{"portal/owed Sync", "owed Sync", nil},
		{"portal/release", "release", nil},
		{"cursor/owed Sync", "owed Sync", []Option{WithFetchSize(100)}},
		{"cursor/release", "release", []Option{WithFetchSize(100)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{}
			db := openDialed(t, d)
			ctx := context.Background()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			waitIdle := func() {
				t.Helper()
				var n int
				for give := time.Now().Add(10 * time.Second); time.Now().Before(give); time.Sleep(time.Millisecond) {
					if err = conn.QueryRowContext(ctx, "SELECT 1").Scan(&n); err == nil {
						return
					}
				}
				t.Fatal("the end never ended: ", err)
			}
			s1 := mustStream(t, tc.first...)
			rows1, err := conn.QueryContext(ctx, q, s1)
			require.NoError(t, err)
			defer rows1.Close()
			require.True(t, rows1.Next())
			require.NoError(t, s1.Cancel())
			waitIdle()

			// The other party's end is held where it sets its deadline
			// (an end's bound is 250 ms or more; a Cancel's interrupt of a
			// pending read, which the cursor's Cancel makes in the caller's
			// goroutine, sets the drain timeout, 5 ms).
			armed, let := make(chan struct{}), make(chan struct{})
			var once sync.Once
			arm := func() {
				d.last().setOnDeadline(func(deadline time.Time) error {
					if time.Until(deadline) > 100*time.Millisecond {
						once.Do(func() {
							close(armed)
							<-let
						})
					}
					return nil
				})
			}
			s2 := mustStream(t)
			rows2, err := conn.QueryContext(ctx, q, s2)
			require.NoError(t, err)
			defer rows2.Close()
			require.True(t, rows2.Next())
			if tc.other == "owed Sync" {
				// Owed without Sync: the timer sends it, owedSyncDelay
				// after the Close, from a goroutine of its own.
				require.NoError(t, rows2.Close())
				arm()
			} else {
				arm()
				require.NoError(t, s2.Cancel()) // the end runs in a goroutine of its own
			}
			select {
			case <-armed:
			case <-time.After(10 * time.Second):
				close(let)
				t.Fatal("the other party never armed its deadline")
			}
			require.NoError(t, rows1.Close()) // late: the stream ended long ago
			close(let)
			d.last().setOnDeadline(nil)
			waitIdle()
			time.Sleep(cursorEndTimeout + 300*time.Millisecond) // past any deadline left
			var n int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT 5").Scan(&n), "a deadline left on the socket failed a statement")
			assert.Equal(t, 5, n)
		})
	}
}

// TestLegacyStmtCallsWhileStreamOpen: a driver user who calls a
// statement's Exec or Query without a context (database/sql calls the
// context versions) gets the same refusal while a stream holds the
// connection, and the stream goes on.
func TestLegacyStmtCallsWhileStreamOpen(t *testing.T) {
	needRowsTable(t)
	conn := pinnedConn(t, openPG(t, DriverName, ""))
	var st driver.Stmt
	require.NoError(t, conn.Raw(func(dc any) error {
		var err error
		st, err = dc.(driver.Conn).Prepare("SELECT 7")
		return err
	}))
	rows, _ := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows WHERE g <= 100000 ORDER BY g")
	_, err := st.Exec(nil) //nolint:staticcheck // the call under test
	require.Error(t, err)
	assert.Equal(t, errQueryInProgress.Error(), err.Error(), "Exec")
	_, err = st.Query(nil) //nolint:staticcheck // the call under test
	require.Error(t, err)
	assert.Equal(t, errQueryInProgress.Error(), err.Error(), "Query")
	got := 1
	for rows.Next() {
		got++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 100_000, got)
	require.NoError(t, rows.Close())
	r, err := st.Query(nil) //nolint:staticcheck // the call under test
	require.NoError(t, err, "once the stream is closed")
	require.NoError(t, r.Close())
	require.NoError(t, st.Close())
}
