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
		mode    StreamMode
	}{
		{"cut", bigQuery, 1_000_000, false, OutcomeCut, true, ModeSingle},
		{"drained", bigQuery, 3, false, OutcomeDrained, false, ModeSingle},
		// Whether the connection is cut depends on who sees the context's
		// end first: jsonstream's watch cuts, lib/pq's cancel request
		// ends the query without a cut.
		{"context", bigQuery, 1_000_000, true, OutcomeContext, false, ModeSingle},
		{"cursor closed", bigQuery, 1_000_000, false, OutcomeCursorClosed, false, ModeCursor},
		{"cursor context", bigQuery, 1_000_000, true, OutcomeContext, false, ModeCursor},
		{"portal closed", bigQuery, 1_000_000, false, OutcomePortalClosed, false, ModePortal},
		{"portal complete", bigQuery, 1, false, OutcomeComplete, false, ModePortal},
		{"portal context", bigQuery, 1_000_000, true, OutcomeContext, false, ModePortal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openPG(t, DriverName, "")
			monitor := openPG(t, "postgres", "")
			conn, pid := backend(t, db)
			rec := &recorder{}
			s := mustStream(t, WithObserver(rec), WithStreamMode(tc.mode))
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
			assert.Equal(t, tc.mode, end.Mode)
			if !tc.cancel {
				assert.Equal(t, tc.cut, end.ConnCut)
			}
			if tc.cancel {
				assert.ErrorIs(t, end.Err, context.Canceled)
			} else {
				assert.Equal(t, int64(1), end.Stats.Rows)
				assert.Equal(t, map[bool]State{false: Closed, true: Complete}[tc.outcome == OutcomeComplete], end.Stats.State)
				assert.NoError(t, end.Err)
			}
			if tc.outcome != OutcomeDrained && tc.outcome != OutcomeComplete {
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
	for _, mode := range []StreamMode{ModeSingle, ModePortal} {
		t.Run(mode.String(), func(t *testing.T) {
			rec := &recorder{}
			db := openPG(t, DriverName, "")
			s := mustStream(t, WithObserver(rec), WithPauseTimeout(100*time.Millisecond), WithStreamMode(mode))
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
			assert.Equal(t, mode == ModeSingle, end.ConnCut, "only the single statement is cut")
			assert.True(t, end.EndedPaused)
			assert.GreaterOrEqual(t, end.Paused, 100*time.Millisecond)
		})
	}
}

// TestServerErrorSameEventsInEveryMode: one rule in every mode, lib/pq's.
// (An error on a row after the first but inside cursor mode's first batch
// comes from Query there, since FETCH computes its batch whole: the rule
// holds, the place differs; README, "Which mode".)
// An error that Query returns (lib/pq waits for a query's first row, so a
// query that fails before it returns its error from Query) fires no event
// and leaves the context's Stream; once Query returned rows, the stream's
// failure is observed: started, first row, ended with OutcomeFailed and
// the server's error, and the Stream is used up.
func TestServerErrorSameEventsInEveryMode(t *testing.T) {
	for _, tc := range []struct {
		name, query, dsn, code string
		kinds                  []EventKind
	}{
		{"division by zero on the first row", "SELECT 1 / (g - 1) FROM generate_series(1, 5) g", "", "22012", nil},
		{"statement_timeout before the first row", "SELECT pg_sleep(2)", "options='-c statement_timeout=100'", "57014", nil},
		{"division by zero on row 300", "SELECT 1 / (g - 300) FROM generate_series(1, 1000) g", "", "22012",
			[]EventKind{EventStarted, EventFirstRow, EventEnded}},
	} {
		for _, mode := range streamModes {
			t.Run(tc.name+"/mode="+mode, func(t *testing.T) {
				db := openPG(t, DriverName, mode+" "+tc.dsn)
				rec := &recorder{}
				s := mustStream(t, WithObserver(rec))
				ctx := ContextWithStream(context.Background(), s)
				rows, err := db.QueryContext(ctx, tc.query)
				queryFailed := err != nil
				if err == nil {
					for rows.Next() {
					}
					err = rows.Err()
					_ = rows.Close()
				}
				assert.Equal(t, tc.code, sqlState(err), "%v", err)
				assert.Equal(t, tc.kinds == nil, queryFailed, "where the error comes from")
				assert.Equal(t, tc.kinds, rec.kinds())
				started := s.Started()
				_, next := db.QueryContext(ctx, "SELECT 1")
				if tc.kinds == nil {
					assert.False(t, started)
					assert.NoError(t, next, "the Stream is left for the next query")
					return
				}
				end := rec.ended(t)
				assert.Equal(t, OutcomeFailed, end.Outcome)
				assert.Equal(t, tc.code, sqlState(end.Err))
				assert.Equal(t, Failed, s.State())
				assert.ErrorIs(t, next, ErrStreamArgument, "the Stream was used up")
			})
		}
	}
}

// TestRefusedQueryLeavesStream: a query that the server refuses before
// it starts (an unknown table) fires no event and leaves the context's
// Stream for the next query, in every mode.
func TestRefusedQueryLeavesStream(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			rec := &recorder{}
			s := mustStream(t, WithObserver(rec))
			ctx := ContextWithStream(context.Background(), s)
			_, err := db.QueryContext(ctx, "SELECT * FROM no_such_table")
			assert.Equal(t, "42P01", sqlState(err))
			assert.Empty(t, rec.kinds())
			assert.False(t, s.Started())
			var one int
			require.NoError(t, db.QueryRowContext(ctx, "SELECT 1").Scan(&one))
			assert.True(t, s.Started())
		})
	}
}
