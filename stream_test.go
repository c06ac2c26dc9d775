package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// querier is what DB, Conn, Tx and Stmt-bound helpers share.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func TestStreamArgumentReachesRowsEverywhere(t *testing.T) {
	ctx := context.Background()
	db, d := openFake(t, countRows(3))

	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck

	for name, q := range map[string]querier{"DB": db, "Conn": conn, "Tx": tx} {
		t.Run(name, func(t *testing.T) {
			s := mustStream(t)
			rows, err := q.QueryContext(ctx, "q ?", 42, s)
			require.NoError(t, err)
			defer rows.Close()
			require.True(t, s.Started())
			require.NoError(t, s.Pause())
			assert.Equal(t, Paused, s.State())
			require.NoError(t, s.Resume())
			n := 0
			for rows.Next() {
				n++
			}
			assert.Equal(t, 3, n)
			assert.Equal(t, Complete, s.State())
		})
	}

	t.Run("Stmt", func(t *testing.T) {
		stmt, err := db.PrepareContext(ctx, "q ?")
		require.NoError(t, err)
		defer stmt.Close()
		for i := 0; i < 2; i++ { // a prepared statement with a new Stream each time
			s := mustStream(t)
			rows, err := stmt.QueryContext(ctx, 7, s)
			require.NoError(t, err)
			require.NoError(t, s.Pause())
			assert.Equal(t, Paused, s.State())
			require.NoError(t, s.Resume())
			for rows.Next() {
			}
			require.NoError(t, rows.Err())
			assert.Equal(t, Complete, s.State())
		}
	})

	t.Run("the Stream takes no placeholder", func(t *testing.T) {
		s := mustStream(t)
		rows, err := db.QueryContext(ctx, "q", s, "a", 1)
		require.NoError(t, err)
		defer rows.Close()
		var seen []driver.NamedValue
		for _, c := range d.opened() {
			if len(c.args) == 2 {
				seen = c.args
			}
		}
		require.Len(t, seen, 2)
		assert.Equal(t, "a", seen[0].Value)
		assert.Equal(t, int64(1), seen[1].Value)
		assert.Equal(t, []int{1, 2}, []int{seen[0].Ordinal, seen[1].Ordinal})
	})
}

func TestStreamArgumentMisuse(t *testing.T) {
	ctx := context.Background()
	db, _ := openFake(t, countRows(2))

	t.Run("Exec", func(t *testing.T) {
		_, err := db.ExecContext(ctx, "x", mustStream(t))
		assert.ErrorIs(t, err, ErrStreamArgument)
		stmt, err := db.Prepare("x")
		require.NoError(t, err)
		defer stmt.Close()
		_, err = stmt.Exec(mustStream(t))
		assert.ErrorIs(t, err, ErrStreamArgument)
	})
	t.Run("twice in one query", func(t *testing.T) {
		s := mustStream(t)
		_, err := db.QueryContext(ctx, "q", s, s)
		assert.ErrorIs(t, err, ErrStreamArgument)
		_, err = db.QueryContext(ctx, "q", 1, mustStream(t), mustStream(t))
		assert.ErrorIs(t, err, ErrStreamArgument)
		assert.False(t, s.Started())
	})
	t.Run("second query", func(t *testing.T) {
		s := mustStream(t)
		rows, err := db.QueryContext(ctx, "q", s)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		_, err = db.QueryContext(ctx, "q", s)
		assert.ErrorIs(t, err, ErrStreamArgument)
	})
	t.Run("nil", func(t *testing.T) {
		var s *Stream
		_, err := db.QueryContext(ctx, "q", s)
		assert.ErrorIs(t, err, ErrStreamArgument)
	})
	t.Run("a failed query leaves the Stream usable and nothing behind", func(t *testing.T) {
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		s := mustStream(t)
		_, err = conn.QueryContext(ctx, "fail", s)
		assert.ErrorIs(t, err, errFakeQuery)
		assert.False(t, s.Started())
		// A conversion error after the Stream: the statement never runs.
		_, err = conn.QueryContext(ctx, "q", s, make(chan int))
		require.Error(t, err)
		// The next query on the same connection must not pick it up.
		plain, err := conn.QueryContext(ctx, "q", 1)
		require.NoError(t, err)
		require.NoError(t, plain.Close())
		assert.False(t, s.Started())
		rows, err := conn.QueryContext(ctx, "q", s)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.True(t, s.Started())
	})
	t.Run("bad options", func(t *testing.T) {
		_, err := NewStream(WithPauseTimeout(-1))
		assert.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "WithPauseTimeout(-1ns)")
		_, err = NewStream(nil)
		assert.ErrorIs(t, err, ErrInvalidOption)
	})
}

// TestStreamArgumentNeverLeaks: a Stream taken out of a statement that then
// fails its argument checks must not reach a later, unrelated statement on
// the same connection (a Conn or Tx, where database/sql does not reset the
// session between statements).
func TestStreamArgumentNeverLeaks(t *testing.T) {
	ctx := context.Background()
	db, _ := openFake(t, countRows(3))
	unconvertible := map[string]any{"a": 1}

	t.Run("conversion error, then a statement without arguments", func(t *testing.T) {
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		s := mustStream(t)
		_, err = conn.QueryContext(ctx, "q ?", s, unconvertible)
		require.Error(t, err)
		_, err = conn.ExecContext(ctx, "SET x = 1")
		assert.NoError(t, err, "the failed statement's Stream reached an Exec")
		_, err = conn.QueryContext(ctx, "q ?", s, unconvertible)
		require.Error(t, err)
		rows, err := conn.QueryContext(ctx, "other query")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.False(t, s.Started(), "the failed statement's Stream was bound to another query")
	})
	t.Run("argument count mismatch on a prepared statement in a Tx", func(t *testing.T) {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		st, err := tx.PrepareContext(ctx, "q ?")
		require.NoError(t, err)
		s := mustStream(t)
		_, err = st.QueryContext(ctx, s) // the Stream takes no placeholder: one argument short
		require.Error(t, err)
		rows, err := tx.QueryContext(ctx, "other ?", 7)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.False(t, s.Started(), "bound to an unrelated query")

		_, err = st.QueryContext(ctx, mustStream(t)) // the same mistake again
		require.Error(t, err)
		s2 := mustStream(t)
		rows, err = tx.QueryContext(ctx, "q ?", 1, s2) // then a correct query
		require.NoError(t, err, "a correct query after the mistake must work")
		require.NoError(t, rows.Close())
		assert.True(t, s2.Started())
		rows, err = st.QueryContext(ctx, 1) // and the statement, retried right
		require.NoError(t, err)
		require.NoError(t, rows.Close())
	})
	t.Run("two Streams, then a statement without arguments", func(t *testing.T) {
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		s1, s2 := mustStream(t), mustStream(t)
		_, err = conn.QueryContext(ctx, "q", s1, s2)
		assert.ErrorIs(t, err, ErrStreamArgument)
		rows, err := conn.QueryContext(ctx, "q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.False(t, s1.Started())
		assert.False(t, s2.Started())
	})
}

// TestPausedNextEndsWithTheTransaction: database/sql ends a transaction's
// rows when the transaction's context ends, but cannot reach a Next
// blocked by a pause; jsonstream watches that context too.
func TestPausedNextEndsWithTheTransaction(t *testing.T) {
	db, _ := openFake(t, countRows(10))
	txCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx, err := db.BeginTx(txCtx, nil)
	require.NoError(t, err)
	s := mustStream(t)
	rows, err := tx.Query("q", s) // the query's own context never ends
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	requireBlocked(t, ch)
	cancel()
	r := requireWithin(t, ch, wake)
	assert.False(t, r.ok)
	assert.ErrorIs(t, r.err, context.Canceled)
	assert.Equal(t, Failed, s.State())
}

// TestStatsIsOneSnapshot: while one goroutine pauses and resumes as fast
// as it can, Stats never pairs a state with the pause figures of another
// moment (Running with PausedNow > 0, Paused with PausedNow = 0).
func TestStatsIsOneSnapshot(t *testing.T) {
	db, _ := openFake(t, countRows(1))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the controller; stopped by stop
		defer wg.Done()
		for !stop.Load() {
			_ = s.Pause()
			_ = s.Resume()
		}
	}()
	var bad, paused, samples int
	var lastTotal time.Duration
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) || paused == 0 {
		st := s.Stats()
		samples++
		if st.State == Paused {
			paused++
		}
		if (st.State == Paused) != (st.PausedNow > 0) {
			bad++
			if bad <= 3 {
				t.Logf("inconsistent snapshot: %+v", st)
			}
		}
		assert.GreaterOrEqual(t, st.PausedTotal, lastTotal, "PausedTotal went back")
		lastTotal = st.PausedTotal
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d snapshots, %d paused, %d inconsistent", samples, paused, bad)
	assert.Zero(t, bad, "snapshots mixing two moments")
}
