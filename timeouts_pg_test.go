package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// pausedOutcome is what a consumer saw of a stream paused for a while.
type pausedOutcome struct {
	before, after int   // rows read before the pause and after Resume
	err           error // rows.Err() at the end
	serverPID     int
}

// pauseAt is the row after which pauseFor pauses.
const pauseAt = 100

// wideRowsQuery returns $1 rows of 8 kB: 3,000 of them are far more than
// the socket buffers hold, so a paused client makes the server wait, yet
// few enough that the consumer reads them fast (a slow read of the tail,
// which the server has finished sending, would count as idle time).
const wideRowsQuery = `SELECT g, repeat('x', 8000), pg_backend_pid() FROM generate_series(1, $1::int) g`

// pauseFor reads pauseAt rows of an n-row wideRowsQuery on db (in a
// transaction when tx is set, committed at the end), pauses for d,
// resumes and reads on to the end.
func pauseFor(t *testing.T, db *sql.DB, n int, d time.Duration, tx bool) pausedOutcome {
	t.Helper()
	ctx := context.Background()
	var q interface {
		QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	} = db
	var txn *sql.Tx
	if tx {
		var err error
		txn, err = db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer func() { _ = txn.Rollback() }()
		q = txn
	}
	s := mustStream(t)
	var out pausedOutcome
	rows, err := q.QueryContext(ctx, wideRowsQuery, n, s)
	require.NoError(t, err)
	defer rows.Close()
	next := 1
	for rows.Next() {
		var g int
		var pad string
		require.NoError(t, rows.Scan(&g, &pad, &out.serverPID))
		require.Equal(t, next, g, "every row once, in order")
		next++
		if g <= pauseAt {
			out.before++
			if g == pauseAt {
				require.NoError(t, s.Pause())
				time.Sleep(d)
				require.NoError(t, s.Resume())
			}
			continue
		}
		out.after++
	}
	out.err = rows.Err()
	if tx && out.err == nil {
		out.err = txn.Commit()
	}
	return out
}

// TestServerTimeoutsDuringPause: what a paused stream meets from the
// server's and the kernel's timeouts, each set shorter than the pause.
// The outcomes are the README's contract.
func TestServerTimeoutsDuringPause(t *testing.T) {
	if testing.Short() {
		t.Skip("pauses of seconds; run without -short")
	}
	const n = 3000
	const pause = 1500 * time.Millisecond
	// The single-statement mode; TestServerTimeoutsDuringPauseByMode
	// compares the modes where they differ.
	for _, mode := range topologyModes[:1] {
		t.Run(mode.name, func(t *testing.T) {
			open := func(t *testing.T, settings string) *sql.DB {
				dsn := pgtest.DSN(t) + " " + settings
				if mode.dsn != "" {
					dsn += " " + mode.dsn
				}
				return openDSN(t, DriverName, dsn)
			}
			healthy := func(t *testing.T, db *sql.DB) {
				var one int
				require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
			}

			// The backend is blocked writing to the client, where it
			// does not act on a cancel (that would break the protocol);
			// the timeout is acted on at the first row after Resume.
			t.Run("statement_timeout", func(t *testing.T) {
				db := open(t, "statement_timeout=500")
				out := pauseFor(t, db, n, pause, false)
				t.Logf("%d rows before the pause, %d after Resume, then %v", out.before, out.after, out.err)
				require.Equal(t, pauseAt, out.before, "the timeout must fire during the pause")
				var pqErr *pq.Error
				require.ErrorAs(t, out.err, &pqErr)
				assert.Equal(t, "57014", string(pqErr.Code))
				assert.Contains(t, pqErr.Message, "statement timeout")
				assert.Less(t, out.after, n-pauseAt, "the query ended early")
				healthy(t, db)
			})
			// A backend sending rows is active, not idle: neither timeout
			// counts a pause.
			t.Run("idle_in_transaction_session_timeout", func(t *testing.T) {
				db := open(t, "idle_in_transaction_session_timeout=300")
				out := pauseFor(t, db, n, pause, true)
				require.NoError(t, out.err)
				assert.Equal(t, n-pauseAt, out.after, "every row after Resume")
				healthy(t, db)
			})
			// Once the server has sent the whole result it is idle in
			// the transaction, whatever the client has yet to read: a
			// pause on the buffered tail counts, and the transaction is
			// lost.
			t.Run("idle_in_transaction_session_timeout, result already sent", func(t *testing.T) {
				db := open(t, "idle_in_transaction_session_timeout=300")
				// 5 rows more than the pause point: 40 kB, which the
				// socket buffers hold.
				out := pauseFor(t, db, pauseAt+5, pause, true)
				t.Logf("%d rows before the pause, %d after Resume, then %v", out.before, out.after, out.err)
				assert.Equal(t, 5, out.after, "the buffered rows still arrive")
				require.Error(t, out.err, "Commit of a transaction the server ended")
				healthy(t, db)
			})
			t.Run("idle_session_timeout", func(t *testing.T) {
				db := open(t, "idle_session_timeout=300")
				out := pauseFor(t, db, n, pause, false)
				require.NoError(t, out.err)
				assert.Equal(t, n-pauseAt, out.after, "every row after Resume")
				healthy(t, db)
			})
			// Keepalives are sent only when nothing waits to be sent; a
			// paused stream has data waiting, which the kernel probes the
			// client's zero window for instead. The client answers.
			t.Run("tcp_keepalives", func(t *testing.T) {
				db := open(t, "tcp_keepalives_idle=1 tcp_keepalives_interval=1 tcp_keepalives_count=1")
				out := pauseFor(t, db, n, 2*pause, false)
				require.NoError(t, out.err)
				assert.Equal(t, n-pauseAt, out.after, "every row after Resume")
				healthy(t, db)
			})
			// TCP_USER_TIMEOUT bounds how long sent data may stay
			// unacknowledged; Linux also applies it to a zero window
			// that stays closed, so the server's kernel aborts the
			// connection of a pause longer than it.
			t.Run("tcp_user_timeout", func(t *testing.T) {
				db := open(t, "tcp_user_timeout=500")
				monitor := monitorDB(t)
				out := pauseFor(t, db, n, 2*pause, false)
				t.Logf("%d rows before the pause, %d after Resume, then %v", out.before, out.after, out.err)
				require.Error(t, out.err)
				assert.Less(t, out.after, n-pauseAt, "the connection ended early")
				var alive int
				require.NoError(t, monitor.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", out.serverPID).Scan(&alive))
				assert.Zero(t, alive, "the backend is gone")
				healthy(t, db)
			})
		})
	}
}
