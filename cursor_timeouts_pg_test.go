package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
