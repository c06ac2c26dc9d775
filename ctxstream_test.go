package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requirePauseHolds pauses s before the first row of rows, requires a
// Next to wait for Resume, then reads the rest: want rows in all.
func requirePauseHolds(t *testing.T, s *Stream, rows *sql.Rows, want int) {
	t.Helper()
	require.True(t, s.Started(), "the Stream did not reach the query")
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	requireBlocked(t, ch)
	assert.Equal(t, int64(0), s.Stats().Rows)
	require.NoError(t, s.Resume())
	r := requireWithin(t, ch, wake)
	require.True(t, r.ok, "%v", r.err)
	n := 1
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, want, n)
	assert.Equal(t, Complete, s.State())
}

func TestContextStreamReachesRowsEverywhere(t *testing.T) {
	bg := context.Background()
	db, _ := openFake(t, countRows(3))

	conn, err := db.Conn(bg)
	require.NoError(t, err)
	defer conn.Close()
	tx, err := db.BeginTx(bg, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck

	for name, q := range map[string]querier{"DB": db, "Conn": conn, "Tx": tx} {
		t.Run(name, func(t *testing.T) {
			s := mustStream(t)
			rows, err := q.QueryContext(ContextWithStream(bg, s), "q ?", 42)
			require.NoError(t, err)
			defer rows.Close()
			requirePauseHolds(t, s, rows, 3)
		})
	}
	t.Run("Stmt", func(t *testing.T) {
		stmt, err := db.PrepareContext(bg, "q ?")
		require.NoError(t, err)
		defer stmt.Close()
		for i := 0; i < 2; i++ { // one statement, a new context and Stream each time
			s := mustStream(t)
			rows, err := stmt.QueryContext(ContextWithStream(bg, s), 7)
			require.NoError(t, err)
			requirePauseHolds(t, s, rows, 3)
		}
	})
	t.Run("QueryRow", func(t *testing.T) {
		s := mustStream(t)
		var v string
		require.NoError(t, db.QueryRowContext(ContextWithStream(bg, s), "q").Scan(&v))
		assert.Equal(t, "row 0", v)
		assert.Equal(t, Closed, s.State(), "QueryRow closes its rows early")
		assert.Equal(t, int64(1), s.Stats().Rows)
	})
	t.Run("a derived context", func(t *testing.T) {
		s := mustStream(t)
		ctx, cancel := context.WithTimeout(ContextWithStream(bg, s), time.Minute)
		defer cancel()
		rows, err := db.QueryContext(ctx, "q")
		require.NoError(t, err)
		defer rows.Close()
		requirePauseHolds(t, s, rows, 3)
	})
	t.Run("inner conn without Queryer: database/sql prepares", func(t *testing.T) {
		d := &fakeDriver{newRows: countRows(3), minimal: true}
		c, err := NewConnector(d)
		require.NoError(t, err)
		mdb := sql.OpenDB(c)
		defer mdb.Close()
		s := mustStream(t)
		rows, err := mdb.QueryContext(ContextWithStream(bg, s), "q")
		require.NoError(t, err)
		defer rows.Close()
		requirePauseHolds(t, s, rows, 3)
	})
}

// TestContextStreamServesOneQuery is the rule for a context that reaches
// several queries: the first query whose rows come back takes the
// Stream; every later one fails before it is sent.
func TestContextStreamServesOneQuery(t *testing.T) {
	bg := context.Background()

	t.Run("count then select", func(t *testing.T) {
		db, d := openFake(t, countRows(3))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		var n string
		require.NoError(t, db.QueryRowContext(ctx, "count").Scan(&n))
		assert.Equal(t, int64(1), s.Stats().Rows, "the Stream serves the count, the first query")
		_, err := db.QueryContext(ctx, "select")
		require.ErrorIs(t, err, ErrStreamArgument)
		assert.Contains(t, err.Error(), "already serves another query")
		assert.NotContains(t, d.statements(), "select", "the refused query was sent")
		derived, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err = db.QueryContext(derived, "select")
		require.ErrorIs(t, err, ErrStreamArgument, "a context derived from it")
		// The fix the error points to: the Stream on the select's context only.
		require.NoError(t, db.QueryRowContext(bg, "count").Scan(&n))
		s2 := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(bg, s2), "select")
		require.NoError(t, err)
		defer rows.Close()
		requirePauseHolds(t, s2, rows, 3)
	})

	t.Run("a Tx shared by several calls", func(t *testing.T) {
		db, d := openFake(t, countRows(2))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		tx, err := db.BeginTx(ctx, nil) // BeginTx ignores the Stream
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck

		// And so does Exec.
		_, err = tx.ExecContext(ctx, "SET LOCAL x = 1")
		require.NoError(t, err)
		assert.False(t, s.Started())
		stmt, err := tx.PrepareContext(ctx, "prepared") // and Prepare
		require.NoError(t, err)
		defer stmt.Close()
		assert.False(t, s.Started())

		rows, err := tx.QueryContext(ctx, "first")
		require.NoError(t, err)
		require.True(t, s.Started())
		require.NoError(t, rows.Close())
		_, err = tx.QueryContext(ctx, "second")
		require.ErrorIs(t, err, ErrStreamArgument)
		_, err = stmt.QueryContext(ctx)
		require.ErrorIs(t, err, ErrStreamArgument, "a prepared statement with the context")
		assert.NotContains(t, d.statements(), "second")
		assert.NotContains(t, d.statements(), "prepared")
		// The refusal leaves the transaction usable.
		rows, err = tx.QueryContext(bg, "third")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		require.NoError(t, tx.Commit())
	})

	t.Run("a query that fails does not use it up", func(t *testing.T) {
		db, _ := openFake(t, countRows(3))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		_, err := db.QueryContext(ctx, "fail")
		require.ErrorIs(t, err, errFakeQuery)
		assert.False(t, s.Started())
		rows, err := db.QueryContext(ctx, "q")
		require.NoError(t, err)
		defer rows.Close()
		requirePauseHolds(t, s, rows, 3)
	})

	t.Run("concurrent queries: exactly one takes it", func(t *testing.T) {
		db, _ := openFake(t, countRows(3))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		const n = 8
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rows, err := db.QueryContext(ctx, "q")
				if err == nil {
					err = rows.Close()
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		ok := 0
		for err := range errs {
			if err == nil {
				ok++
				continue
			}
			require.ErrorIs(t, err, ErrStreamArgument)
		}
		assert.Equal(t, 1, ok)
		assert.True(t, s.Started())
	})

	t.Run("the nearest Stream wins", func(t *testing.T) {
		db, _ := openFake(t, countRows(3))
		outer, inner := mustStream(t), mustStream(t)
		outerCtx := ContextWithStream(bg, outer)
		rows, err := db.QueryContext(ContextWithStream(outerCtx, inner), "q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.True(t, inner.Started())
		assert.False(t, outer.Started())
		rows, err = db.QueryContext(outerCtx, "q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.True(t, outer.Started())
	})

	t.Run("nil Stream", func(t *testing.T) {
		db, d := openFake(t, countRows(1))
		_, err := db.QueryContext(ContextWithStream(bg, nil), "q")
		require.ErrorIs(t, err, ErrStreamArgument)
		assert.NotContains(t, d.statements(), "q")
	})

	t.Run("a Stream already used as an argument", func(t *testing.T) {
		db, _ := openFake(t, countRows(1))
		s := mustStream(t)
		rows, err := db.QueryContext(bg, "q", s)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		_, err = db.QueryContext(ContextWithStream(bg, s), "q")
		require.ErrorIs(t, err, ErrStreamArgument)
	})
}

func TestContextStreamAndArgument(t *testing.T) {
	bg := context.Background()

	t.Run("another Stream as argument: refused, neither used up", func(t *testing.T) {
		db, d := openFake(t, countRows(3))
		inCtx, arg := mustStream(t), mustStream(t)
		ctx := ContextWithStream(bg, inCtx)
		_, err := db.QueryContext(ctx, "q", arg)
		require.ErrorIs(t, err, ErrStreamArgument)
		assert.Contains(t, err.Error(), "another Stream in the context")
		stmt, err := db.PrepareContext(bg, "q")
		require.NoError(t, err)
		defer stmt.Close()
		_, err = stmt.QueryContext(ctx, arg)
		require.ErrorIs(t, err, ErrStreamArgument, "through a prepared statement")
		assert.NotContains(t, d.statements(), "q")
		assert.False(t, inCtx.Started())
		assert.False(t, arg.Started())

		rows, err := db.QueryContext(bg, "q", arg)
		require.NoError(t, err)
		requirePauseHolds(t, arg, rows, 3)
		rows, err = db.QueryContext(ctx, "q")
		require.NoError(t, err)
		requirePauseHolds(t, inCtx, rows, 3)
	})
	t.Run("the context's own Stream as argument", func(t *testing.T) {
		db, _ := openFake(t, countRows(3))
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(bg, s), "q", s)
		require.NoError(t, err)
		requirePauseHolds(t, s, rows, 3)
	})
	t.Run("an argument Stream on a context whose Stream is used", func(t *testing.T) {
		db, _ := openFake(t, countRows(1))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		rows, err := db.QueryContext(ctx, "q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		arg := mustStream(t)
		_, err = db.QueryContext(ctx, "q", arg)
		require.ErrorIs(t, err, ErrStreamArgument)
		assert.False(t, arg.Started())
	})
	t.Run("Exec with a context Stream runs; with a Stream argument it fails", func(t *testing.T) {
		db, _ := openFake(t, countRows(1))
		s := mustStream(t)
		ctx := ContextWithStream(bg, s)
		_, err := db.ExecContext(ctx, "x")
		require.NoError(t, err)
		_, err = db.ExecContext(ctx, "x", mustStream(t))
		require.ErrorIs(t, err, ErrStreamArgument)
		assert.False(t, s.Started())
	})
}

// querySettings runs q with ctx and a Stream s (a fresh one without
// options when s is nil) and returns the settings its rows got.
func querySettings(ctx context.Context, t *testing.T, db *sql.DB, s *Stream) settings {
	t.Helper()
	if s == nil {
		s = mustStream(t)
	}
	rows, err := db.QueryContext(ctx, "q", s)
	require.NoError(t, err)
	defer rows.Close()
	return s.bound.Load().settings
}

func TestContextOptions(t *testing.T) {
	bg := context.Background()
	db, _ := openFake(t, countRows(1),
		WithPauseTimeout(time.Hour), WithCloseMode(CloseDrain), WithDrainTimeout(time.Second))

	t.Run("connector < context < Stream", func(t *testing.T) {
		ctx, err := ContextWithOptions(bg, WithPauseTimeout(2*time.Hour), WithDrainTimeout(7*time.Millisecond))
		require.NoError(t, err)
		got := querySettings(ctx, t, db, mustStream(t, WithPauseTimeout(3*time.Hour)))
		assert.Equal(t, 3*time.Hour, got.pauseTimeout, "the Stream's")
		assert.Equal(t, 7*time.Millisecond, got.drainTimeout, "the context's")
		assert.Equal(t, CloseDrain, got.closeMode, "the connector's")

		// Every query of the context gets them; a context Stream too.
		for i := 0; i < 2; i++ {
			got = querySettings(ctx, t, db, nil)
			assert.Equal(t, 2*time.Hour, got.pauseTimeout)
			assert.Equal(t, 7*time.Millisecond, got.drainTimeout)
		}
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(ctx, s), "q")
		require.NoError(t, err)
		defer rows.Close()
		assert.Equal(t, 2*time.Hour, s.bound.Load().settings.pauseTimeout)
	})
	t.Run("nested: the inner ones on top; siblings apart", func(t *testing.T) {
		outer, err := ContextWithOptions(bg, WithPauseTimeout(time.Minute), WithCloseMode(CloseCut))
		require.NoError(t, err)
		a, err := ContextWithOptions(outer, WithPauseTimeout(2*time.Minute))
		require.NoError(t, err)
		b, err := ContextWithOptions(outer, WithDrainTimeout(3*time.Millisecond))
		require.NoError(t, err)
		got := querySettings(a, t, db, nil)
		assert.Equal(t, 2*time.Minute, got.pauseTimeout)
		assert.Equal(t, CloseCut, got.closeMode)
		assert.Equal(t, time.Second, got.drainTimeout, "b's option reached a")
		got = querySettings(b, t, db, nil)
		assert.Equal(t, time.Minute, got.pauseTimeout, "a's option reached b")
		assert.Equal(t, 3*time.Millisecond, got.drainTimeout)
	})
	t.Run("a Stream and options in either order", func(t *testing.T) {
		s1, s2 := mustStream(t), mustStream(t)
		withOpts, err := ContextWithOptions(bg, WithPauseTimeout(time.Minute))
		require.NoError(t, err)
		streamFirst, err := ContextWithOptions(ContextWithStream(bg, s2), WithPauseTimeout(time.Minute))
		require.NoError(t, err)
		for s, ctx := range map[*Stream]context.Context{s1: ContextWithStream(withOpts, s1), s2: streamFirst} {
			rows, err := db.QueryContext(ctx, "q")
			require.NoError(t, err)
			require.True(t, s.Started())
			assert.Equal(t, time.Minute, s.bound.Load().settings.pauseTimeout)
			require.NoError(t, rows.Close())
		}
	})
	t.Run("bad options", func(t *testing.T) {
		_, err := ContextWithOptions(bg, WithDrainTimeout(0))
		require.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "WithDrainTimeout(0s)")
		_, err = ContextWithOptions(bg, nil)
		require.ErrorIs(t, err, ErrInvalidOption)
	})
	t.Run("a pause timeout from the context", func(t *testing.T) {
		ctx, err := ContextWithOptions(bg, WithPauseTimeout(20*time.Millisecond))
		require.NoError(t, err)
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(ctx, s), "q")
		require.NoError(t, err)
		defer rows.Close()
		require.NoError(t, s.Pause())
		r := requireWithin(t, nextAsync(rows), time.Second)
		assert.False(t, r.ok)
		assert.True(t, errors.Is(r.err, ErrPauseTimeout), "%v", r.err)
	})
}

// TestContextQueryAllocs: finding the context's value costs a query no
// allocation, whether the context carries none (a request's context with
// values of its own), options, or a Stream.
func TestContextQueryAllocs(t *testing.T) {
	type otherKey struct{}
	_, wrapped := fakeDBs(t, 100)
	plain := context.WithValue(context.Background(), otherKey{}, "request values")
	withOpts, err := ContextWithOptions(plain, WithPauseTimeout(time.Minute), WithCloseMode(CloseDrain))
	require.NoError(t, err)
	query := func(ctx context.Context, args ...any) {
		rows, err := wrapped.QueryContext(ctx, "q", args...)
		require.NoError(t, err)
		readAll(t, rows)
	}
	query(plain) // warm the pools
	base := testing.AllocsPerRun(200, func() { query(context.Background()) })
	for name, ctx := range map[string]context.Context{"no jsonstream value": plain, "options": withOpts} {
		got := testing.AllocsPerRun(200, func() { query(ctx) })
		assert.Equal(t, base, got, "%s: allocations per query", name)
	}
	// A Stream costs what it costs as an argument; the context adds its own
	// allocation, the caller's.
	perArg := testing.AllocsPerRun(200, func() {
		s, _ := NewStream()
		query(context.Background(), s)
	})
	perCtx := testing.AllocsPerRun(200, func() {
		s, _ := NewStream()
		query(ContextWithStream(withOpts, s))
	})
	t.Logf("plain %.0f, Stream argument %.0f, context Stream %.0f allocations per query", base, perArg, perCtx)
	assert.LessOrEqual(t, perCtx, perArg+2, "ContextWithStream: its value and context.WithValue")
}
