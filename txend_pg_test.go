package jsonstream

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTxEndWhileStreamOpen: on a sql.Conn, a stream opened beside a
// transaction begun on the same conn runs inside that transaction.
// database/sql lets the transaction's Commit or Rollback reach the driver
// while the stream is open (it ends only the transaction's own rows
// first): the stream is ended first, with sql.ErrTxDone. A portal or a
// cursor is closed and the Commit or Rollback does what it says on the
// connection, which serves the next statement; a single statement with
// rows left is cut, so that its transaction is rolled back, and the
// Commit returns ErrConnCut.
func TestTxEndWhileStreamOpen(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	_, err := db.Exec("DROP TABLE IF EXISTS jsonstream_txend; CREATE TABLE jsonstream_txend (name text)")
	require.NoError(t, err)
	for _, end := range []string{"commit", "rollback"} {
		for name, opts := range streamOptions {
			t.Run(end+"/"+name, func(t *testing.T) {
				ctx := context.Background()
				conn := pinnedConn(t, db)
				tx, err := conn.BeginTx(ctx, nil)
				require.NoError(t, err)
				mark := end + "/" + name
				_, err = tx.ExecContext(ctx, "INSERT INTO jsonstream_txend VALUES ($1)", mark)
				require.NoError(t, err)
				rows, _ := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows WHERE g <= 100000 ORDER BY g", opts...)

				if end == "commit" {
					err = tx.Commit()
				} else {
					err = tx.Rollback()
				}
				if name == "single" && end == "commit" {
					require.ErrorIs(t, err, ErrCommitCut)
				} else {
					require.NoError(t, err)
				}
				assert.False(t, rows.Next(), "the stream went on after its transaction ended")
				assert.ErrorIs(t, rows.Err(), sql.ErrTxDone)
				require.NoError(t, rows.Close())

				var n int
				require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM jsonstream_txend WHERE name = $1", mark).Scan(&n))
				want := 0
				if end == "commit" && name != "single" {
					want = 1
				}
				assert.Equal(t, want, n, "rows the transaction wrote")
				if name == "single" {
					// The connection was cut, and says so to the next statement.
					require.ErrorIs(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&n), ErrConnCut)
					return
				}
				assertIdle(t, conn)
			})
		}
	}
}

// TestTxEndWaitsForTheStreamsEnd: a Cancel ends the server's side of a
// stream opened beside a transaction on its sql.Conn from a goroutine of
// the stream's own (release). A Rollback of the transaction that comes
// meanwhile waits for that end to be over (here it is held at its first
// write), then rolls back: the two never share the connection. (A
// cursor's Cancel in the caller's transaction leaves a batch in flight to
// the end that comes next, here the Rollback's own, which
// TestTxEndWhileStreamOpen shows.)
func TestTxEndWaitsForTheStreamsEnd(t *testing.T) {
	needRowsTable(t)
	d := &fakeDialer{}
	db := openDialed(t, d)
	conn := pinnedConn(t, db)
	tx, err := conn.BeginTx(context.Background(), nil)
	require.NoError(t, err)
	rows, s := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows ORDER BY g")

	held, let := make(chan struct{}), make(chan struct{})
	var once, letOnce sync.Once
	letGo := func() { letOnce.Do(func() { close(let) }) }
	defer letGo()
	var mu sync.Mutex
	writes := 0
	hold := func([]byte) {
		mu.Lock()
		writes++
		mu.Unlock()
		once.Do(func() {
			close(held)
			<-let
		})
	}
	d.last().beforeWrite.Store(&hold)
	require.NoError(t, s.Cancel())
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's end wrote nothing")
	}
	done := make(chan error, 1)
	go func() { done <- tx.Rollback() }()
	select {
	case err := <-done:
		t.Fatalf("the Rollback returned (%v) while the stream's end held the connection", err)
	case <-time.After(100 * time.Millisecond):
	}
	mu.Lock()
	assert.Equal(t, 1, writes, "writes while the end was held")
	mu.Unlock()
	letGo()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the Rollback never returned")
	}
	assert.False(t, rows.Next())
	assert.ErrorIs(t, rows.Err(), ErrCanceled)
	require.NoError(t, rows.Close())
	assertIdle(t, conn)
}

// TestTxContextEndWhileStreamOpen: the context of a transaction begun on
// a sql.Conn ends while a portal stream opened beside it on the same conn
// is open. The stream's watch of that context ends the stream (release),
// and database/sql's rolls the transaction back from another goroutine,
// through lib/pq, which sends ROLLBACK or, when its own watch of the
// context came first, closes the connection (Terminate): not while the
// stream's end is under way. The test orders them: lib/pq's write waits
// until the end wrote, and the end's write waits 100 ms for lib/pq's to
// go out. The stream fails with the context's error. (A cursor's end goes
// through lib/pq, which refuses it once its own watch of the context
// marked the connection bad.)
func TestTxContextEndWhileStreamOpen(t *testing.T) {
	needRowsTable(t)
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			d := &fakeDialer{}
			db := openDialed(t, d)
			conn := pinnedConn(t, db)
			txCtx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := conn.BeginTx(txCtx, nil)
			require.NoError(t, err)
			rows, _ := streamOn(t, conn, "SELECT g FROM jsonstream_test_rows ORDER BY g")

			endWrote, held, txEndSent := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var endOnce, txOnce sync.Once
			overlapped := false // read once held is closed
			hook := func(b []byte) {
				if b[0] == 'X' || strings.Contains(string(b), "ROLLBACK") {
					select {
					case <-endWrote:
					case <-time.After(2 * time.Second):
					}
					txOnce.Do(func() { close(txEndSent) })
					return
				}
				endOnce.Do(func() {
					close(endWrote)
					select {
					case <-txEndSent:
						overlapped = true
					case <-time.After(100 * time.Millisecond):
					}
					close(held)
				})
			}
			d.last().beforeWrite.Store(&hook)
			cancel()
			select {
			case <-held:
			case <-time.After(10 * time.Second):
				t.Fatal("the stream's end wrote nothing")
			}
			assert.False(t, overlapped, "lib/pq ended the transaction while the stream's end was under way")
			for rows.Next() {
			}
			assert.ErrorIs(t, rows.Err(), context.Canceled)
			require.NoError(t, rows.Close())
		})
	}
}

// assertIdle requires the session of conn to serve a statement, outside
// any transaction block, as pg_stat_activity shows it to a connection of
// lib/pq's.
func assertIdle(t *testing.T, conn *sql.Conn) {
	t.Helper()
	ctx := context.Background()
	var pid int
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	var state string
	require.NoError(t, openPG(t, "postgres", "").QueryRowContext(ctx, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state))
	assert.Equal(t, "idle", state, "the session's state after its transaction ended")
}

// TestTxEndWithoutStream: Commit and Rollback with no stream open, or
// with a stream whose server side already ended (its rows read whole but
// not closed), go out at once and do not touch the stream.
func TestTxEndWithoutStream(t *testing.T) {
	db := openPG(t, DriverName, "")
	for name, opts := range streamOptions {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			conn := pinnedConn(t, db)
			tx, err := conn.BeginTx(ctx, nil)
			require.NoError(t, err)
			rows, _ := streamOn(t, conn, "SELECT g FROM generate_series(1, 3) g", opts...)
			got := 1
			for rows.Next() {
				got++
			}
			require.NoError(t, rows.Err())
			require.Equal(t, 3, got)
			require.NoError(t, tx.Commit(), "a stream read whole")
			require.NoError(t, rows.Err(), "the stream read whole is not failed by the Commit")
			require.NoError(t, rows.Close())
			tx, err = conn.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.NoError(t, tx.Rollback(), "no stream")
			var n int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&n))
		})
	}
}
