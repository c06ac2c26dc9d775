package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/integration/sqlcdb"
)

// pauseAtStart is a sqlcdb.DBTX that pauses s as soon as a query's rows
// come back, before the generated code reads the first one: the hook sqlc
// offers into its code, used here to make the pause land at a known row.
type pauseAtStart struct {
	sqlcdb.DBTX
	t *testing.T
	s *jsonstream.Stream
}

func (p pauseAtStart) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	rows, err := p.DBTX.QueryContext(ctx, query, args...)
	if err == nil {
		assert.NoError(p.t, p.s.Pause())
	}
	return rows, err
}

type listResult struct {
	docs []sqlcdb.Document
	err  error
}

// listAsync runs the generated ListDocuments of kind "a" in a goroutine.
func listAsync(ctx context.Context, q *sqlcdb.Queries) <-chan listResult {
	ch := make(chan listResult, 1)
	go func() {
		docs, err := q.ListDocuments(ctx, "a")
		ch <- listResult{docs, err}
	}()
	return ch
}

func TestSQLC(t *testing.T) {
	db := openJSONStream(t)
	bg := context.Background()

	t.Run("pause holds the generated query, resume delivers every row once", func(t *testing.T) {
		s := newStream(t)
		ch := listAsync(jsonstream.ContextWithStream(bg, s), sqlcdb.New(pauseAtStart{db, t, s}))
		requireStarted(t, s)
		requireHeld(t, s, ch)
		assert.Equal(t, int64(0), s.Stats().Rows)
		require.NoError(t, s.Resume())
		r := <-ch
		require.NoError(t, r.err)
		ids := make([]int64, len(r.docs))
		for i, d := range r.docs {
			ids[i] = d.ID
			var doc struct{ ID int64 }
			require.NoError(t, json.Unmarshal(d.Data, &doc))
			require.Equal(t, d.ID, doc.ID)
		}
		requireEveryIDOnce(t, ids)
		assert.Equal(t, jsonstream.Complete, s.State())
		assert.Equal(t, int64(1), s.Stats().Pauses)
	})

	t.Run("cancel ends the generated query with ErrCanceled", func(t *testing.T) {
		s := newStream(t)
		pid := backendPID(t, db)
		ch := listAsync(jsonstream.ContextWithStream(bg, s), sqlcdb.New(pauseAtStart{db, t, s}))
		requireStarted(t, s)
		requireHeld(t, s, ch)
		require.NoError(t, s.Cancel())
		r := requireReturns(t, ch)
		assert.ErrorIs(t, r.err, jsonstream.ErrCanceled)
		assert.Nil(t, r.docs)
		requireQueryEnded(t, pid)
	})

	t.Run("ending the context closes the generated query early; the server ends it", func(t *testing.T) {
		s := newStream(t)
		pid := backendPID(t, db)
		ctx, cancel := context.WithCancel(jsonstream.ContextWithStream(bg, s))
		defer cancel()
		ch := listAsync(ctx, sqlcdb.New(pauseAtStart{db, t, s}))
		requireStarted(t, s)
		requireHeld(t, s, ch)
		cancel()
		r := requireReturns(t, ch)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Nil(t, r.docs)
		assert.Equal(t, jsonstream.Failed, s.State())
		requireQueryEnded(t, pid)
	})

	t.Run("the pause timeout from the context's options", func(t *testing.T) {
		ctx, err := jsonstream.ContextWithOptions(bg, jsonstream.WithPauseTimeout(50*time.Millisecond))
		require.NoError(t, err)
		s := newStream(t)
		ch := listAsync(jsonstream.ContextWithStream(ctx, s), sqlcdb.New(pauseAtStart{db, t, s}))
		r := requireReturns(t, ch)
		assert.ErrorIs(t, r.err, jsonstream.ErrPauseTimeout)
		assert.Equal(t, int64(1), s.Stats().PauseTimeouts)
	})

	t.Run("count then select with one context: the select is refused, not run unobserved", func(t *testing.T) {
		q := sqlcdb.New(db)
		s := newStream(t)
		ctx := jsonstream.ContextWithStream(bg, s)
		n, err := q.CountDocuments(ctx, "b")
		require.NoError(t, err)
		assert.Equal(t, int64(3), n)
		_, err = q.ListDocuments(ctx, "b")
		require.ErrorIs(t, err, jsonstream.ErrStreamArgument)

		// Right: the Stream on the select's context only.
		s = newStream(t)
		n, err = q.CountDocuments(bg, "b")
		require.NoError(t, err)
		docs, err := q.ListDocuments(jsonstream.ContextWithStream(bg, s), "b")
		require.NoError(t, err)
		assert.Len(t, docs, int(n))
		assert.Equal(t, n, s.Stats().Rows)
	})

	t.Run("in a transaction", func(t *testing.T) {
		tx, err := db.BeginTx(bg, nil)
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		s := newStream(t)
		ch := listAsync(jsonstream.ContextWithStream(bg, s), sqlcdb.New(pauseAtStart{tx, t, s}))
		requireStarted(t, s)
		requireHeld(t, s, ch)
		require.NoError(t, s.Resume())
		r := requireReturns(t, ch)
		require.NoError(t, r.err)
		assert.Len(t, r.docs, totalA)
		require.NoError(t, tx.Commit())
	})
}

// requireStarted waits for s to be bound to its query.
func requireStarted(t *testing.T, s *jsonstream.Stream) {
	t.Helper()
	require.Eventually(t, s.Started, 5*time.Second, time.Millisecond, "the Stream never reached its query")
}

func requireReturns[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("did not return")
		panic(errors.New("unreachable"))
	}
}
