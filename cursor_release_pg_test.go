package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A failure frees the server at once, from its own goroutine, while the
// consumer is away: not in Next, as a consumer that paused the stream
// while it sends the rows it has is (the README's send example).

// serverReleased waits until backend pid holds no transaction and no
// snapshot (idle, backend_xmin NULL), or is gone: what a long pause must
// not hold back from VACUUM.
func serverReleased(t *testing.T, monitor *sql.DB, pid int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var state sql.NullString
		var holdsXmin bool
		err := monitor.QueryRow(`SELECT state, backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&state, &holdsXmin)
		if err == sql.ErrNoRows {
			return true
		}
		require.NoError(t, err)
		return state.String == "idle" && !holdsXmin
	}, 2*time.Second, 5*time.Millisecond, "backend %d still holds its transaction or snapshot", pid)
}

func TestFailureFreesServerWhileConsumerAway(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		end  func(*Stream)
		want error
	}{
		{"pause timeout", []Option{WithPauseTimeout(100 * time.Millisecond)}, func(*Stream) {}, ErrPauseTimeout},
		{"cancel", nil, func(s *Stream) { require.NoError(t, s.Cancel()) }, ErrCanceled},
	} {
		for _, mode := range streamModes {
			t.Run(tc.name+"/mode="+mode, func(t *testing.T) {
				db := openPG(t, DriverName, mode)
				monitor := openPG(t, "postgres", "")
				conn, pid := backend(t, db)
				// The failure's bound on reading off the batch in flight and
				// ending the cursor is the drain timeout: one long enough for
				// a loaded machine, so that the connection is kept.
				s := mustStream(t, append(tc.opts, WithDrainTimeout(2*time.Second))...)
				rows, err := conn.QueryContext(context.Background(), bigQuery, bigRows, s)
				require.NoError(t, err)
				for i := 0; i < 20; i++ {
					require.True(t, rows.Next())
				}
				require.NoError(t, s.Pause())
				// The consumer is away: it calls neither Next nor Close.
				tc.end(s)
				serverReleased(t, monitor, pid)
				assert.Equal(t, Failed, s.State())

				assert.False(t, rows.Next())
				assert.ErrorIs(t, rows.Err(), tc.want)
				require.NoError(t, rows.Close())
				if mode != "" {
					assert.Equal(t, pid, pidOf(t, conn), "cursor mode keeps the connection")
					sessionClean(t, conn)
				}
			})
		}
	}
}

// TestReleaseWhileConsumerReads: Cancel from another goroutine while the
// consumer reads as fast as it can. Whoever is on the wire ends the
// cursor; the stream fails with ErrCanceled, the session is clean and the
// connection kept (a drain timeout long enough for a loaded machine, so
// that no batch in flight is cut).
func TestReleaseWhileConsumerReads(t *testing.T) {
	db := openCursorPG(t, "jsonstream_fetch_size=7")
	conn, pid := backend(t, db)
	for i := 0; i < 50; i++ {
		s := mustStream(t, WithDrainTimeout(2*time.Second))
		rows, err := conn.QueryContext(context.Background(), bigQuery, 100_000, s)
		require.NoError(t, err)
		go func() {
			time.Sleep(time.Duration(i%5) * time.Millisecond)
			_ = s.Cancel()
		}()
		for rows.Next() {
		}
		assert.ErrorIs(t, rows.Err(), ErrCanceled)
		require.NoError(t, rows.Close())
		assert.Equal(t, pid, pidOf(t, conn))
		sessionClean(t, conn)
	}
}

// TestCancelReturnsAtOnce: Cancel does not wait for the cursor's end,
// not even in the caller's transaction, where ending it means reading off
// a batch in flight of any size.
func TestCancelReturnsAtOnce(t *testing.T) {
	ctx := context.Background()
	db := openCursorPG(t, "")
	const q = "SELECT g, repeat('x', 200) FROM generate_series(1, 3000000) g"
	for _, inTx := range []bool{false, true} {
		t.Run(map[bool]string{false: "autocommit", true: "BeginTx"}[inTx], func(t *testing.T) {
			s := mustStream(t, WithFetchSize(3_000_000))
			var rows *sql.Rows
			var tx *sql.Tx
			var err error
			if inTx {
				tx, err = db.BeginTx(ctx, nil)
				require.NoError(t, err)
				rows, err = tx.QueryContext(ctx, q, s)
			} else {
				rows, err = db.QueryContext(ctx, q, s)
			}
			require.NoError(t, err)
			require.True(t, rows.Next())
			start := time.Now()
			require.NoError(t, s.Cancel())
			took := time.Since(start)
			_ = rows.Close()
			if tx != nil {
				require.NoError(t, tx.Rollback())
			}
			assert.Less(t, took, 500*time.Millisecond, "Cancel waited for the stream")
			sessionClean(t, db)
		})
	}
}

// TestLateReleaseLeavesNextQueryAlone: a failure whose release comes
// after the consumer's Close handed the connection to another query (the
// failing goroutine held up meanwhile: here by the pauser's lock, as a
// Stats or Pause on another goroutine may) leaves that query's socket
// alone: its CloseAuto still cuts at the drain timeout.
func TestLateReleaseLeavesNextQueryAlone(t *testing.T) {
	ctx := context.Background()
	db := openCursorPG(t, "") // one connection
	s := mustStream(t, WithFetchSize(FetchAuto))
	rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	require.NoError(t, s.Resume())
	p := s.bound.Load().pause.Load()
	p.mu.Lock() // Cancel stops in endPause, after the stream failed
	canceled := make(chan struct{})
	go func() { _ = s.Cancel(); close(canceled) }()
	for s.State() != Failed {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, rows.Close()) // the cursor closed, the connection back in the pool

	next := mustStream(t, WithFetchSize(0), WithDrainTimeout(300*time.Millisecond))
	rows2, err := db.QueryContext(ctx, "SELECT g, repeat('x', 300) FROM generate_series(1, 4000000) g", next)
	require.NoError(t, err)
	require.True(t, rows2.Next())
	go func() {
		time.Sleep(100 * time.Millisecond) // rows2's drain has armed its deadline
		p.mu.Unlock()                      // the first stream's release runs now
	}()
	start := time.Now()
	_ = rows2.Close()
	took := time.Since(start)
	<-canceled
	assert.Less(t, took, 2*time.Second, "the drain's deadline was cleared by another stream's release")
}
