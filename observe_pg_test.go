package jsonstream

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The outcomes that only a real connection shows: a cut, a drain that
// keeps the connection, the context's end.

func TestObserverOutcomesPG(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		name    string
		query   string
		rows    int
		cancel  bool
		outcome Outcome
		cut     bool
		fetch   int
	}{
		{"cut", bigQuery, 1_000_000, false, OutcomeCut, true, 0},
		{"drained", bigQuery, 3, false, OutcomeDrained, false, 0},
		// Whether the connection is cut depends on who sees the context's
		// end first: jsonstream's watch cuts, lib/pq's cancel request
		// ends the query without a cut.
		{"context", bigQuery, 1_000_000, true, OutcomeContext, false, 0},
		{"cursor closed", bigQuery, 1_000_000, false, OutcomeCursorClosed, false, FetchAuto},
		{"cursor context", bigQuery, 1_000_000, true, OutcomeContext, false, FetchAuto},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openPG(t, DriverName, "")
			monitor := openPG(t, "postgres", "")
			conn, pid := backend(t, db)
			rec := &recorder{}
			s := mustStream(t, WithObserver(rec), WithFetchSize(tc.fetch))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rows, err := conn.QueryContext(ctx, tc.query, tc.rows, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			if tc.cancel {
				cancel()
				for rows.Next() {
				}
				assert.ErrorIs(t, rows.Err(), context.Canceled)
			}
			require.NoError(t, rows.Close())

			end := rec.ended(t)
			assert.Equal(t, tc.outcome, end.Outcome)
			assert.Equal(t, map[bool]StreamMode{false: ModeSingle, true: ModeCursor}[tc.fetch != 0], end.Mode)
			if !tc.cancel {
				assert.Equal(t, tc.cut, end.ConnCut)
			}
			if tc.cancel {
				assert.ErrorIs(t, end.Err, context.Canceled)
			} else {
				assert.Equal(t, int64(1), end.Stats.Rows)
				assert.Equal(t, Closed, end.Stats.State)
				assert.NoError(t, end.Err)
			}
			if tc.outcome != OutcomeDrained {
				requireBackendStops(t, monitor, pid)
			}
			assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventEnded}, rec.kinds())
			start := rec.last(t, EventStarted)
			assert.Equal(t, ctx, start.Context)
			assert.Equal(t, end.Stats.FirstRow, rec.last(t, EventFirstRow).Stats.FirstRow)
		})
	}
}

func TestObserverPauseTimeoutPG(t *testing.T) {
	needRowsTable(t)
	rec := &recorder{}
	db := openPG(t, DriverName, "")
	s := mustStream(t, WithObserver(rec), WithPauseTimeout(100*time.Millisecond))
	rows, err := db.Query(bigQuery, 1_000_000, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	assert.False(t, rows.Next())
	require.NoError(t, rows.Close())

	assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout, EventEnded}, rec.kinds())
	end := rec.last(t, EventEnded)
	assert.Equal(t, OutcomePauseTimeout, end.Outcome)
	assert.ErrorIs(t, end.Err, ErrPauseTimeout)
	assert.True(t, end.ConnCut)
	assert.True(t, end.EndedPaused)
	assert.GreaterOrEqual(t, end.Paused, 100*time.Millisecond)
}
