package integration

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
)

// document is a row of the documents table for sqlx and GORM.
type document struct {
	ID   int64           `db:"id"`
	Kind string          `db:"kind"`
	Data json.RawMessage `db:"data"`
}

const idsOfKind = "SELECT id FROM documents WHERE kind = $1 ORDER BY id"

func openSqlx(t *testing.T) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open(jsonstream.DriverName, dsn(t))
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// sqlxPauseAtStart is a sqlx.QueryerContext that pauses s as soon as a
// query's rows come back, so that SelectContext, which reads every row
// itself, meets the pause at a known row.
type sqlxPauseAtStart struct {
	*sqlx.DB
	t *testing.T
	s *jsonstream.Stream
}

func (p sqlxPauseAtStart) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	rows, err := p.DB.QueryxContext(ctx, query, args...)
	if err == nil {
		assert.NoError(p.t, p.s.Pause())
	}
	return rows, err
}

func TestSqlx(t *testing.T) {
	db := openSqlx(t)
	bg := context.Background()
	require.Equal(t, sqlx.DOLLAR, sqlx.BindType(db.DriverName()), "sqlx.BindDriver in TestMain")

	t.Run("QueryxContext with a Stream argument", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryxContext(bg, idsOfKind, "a", s)
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
	})
	t.Run("QueryxContext with a context Stream", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryxContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		pauseAndResume(t, s, rows)

		s = newStream(t)
		rows, err = db.QueryxContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		cancelPaused(t, s, rows)
	})
	t.Run("StructScan", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryxContext(jsonstream.ContextWithStream(bg, s), "SELECT id, kind, data FROM documents WHERE kind = $1 ORDER BY id", "b")
		require.NoError(t, err)
		defer rows.Close()
		var got []document
		for rows.Next() {
			var d document
			require.NoError(t, rows.StructScan(&d))
			got = append(got, d)
		}
		require.NoError(t, rows.Err())
		require.Len(t, got, 3)
		assert.Equal(t, int64(100001), got[0].ID)
		assert.JSONEq(t, `{"id": 100001}`, string(got[0].Data))
		assert.Equal(t, jsonstream.Complete, s.State())
	})
	t.Run("SelectContext", func(t *testing.T) {
		s := newStream(t)
		done := make(chan error, 1)
		var ids []int64
		go func() {
			done <- sqlx.SelectContext(jsonstream.ContextWithStream(bg, s), sqlxPauseAtStart{db, t, s}, &ids, idsOfKind, "a")
		}()
		requireStarted(t, s)
		requireHeld(t, s, done)
		assert.Equal(t, int64(0), s.Stats().Rows)
		require.NoError(t, s.Resume())
		require.NoError(t, requireReturns(t, done))
		requireEveryIDOnce(t, ids)

		s = newStream(t)
		go func() {
			done <- sqlx.SelectContext(jsonstream.ContextWithStream(bg, s), sqlxPauseAtStart{db, t, s}, &ids, idsOfKind, "a")
		}()
		requireStarted(t, s)
		requireHeld(t, s, done)
		require.NoError(t, s.Cancel())
		assert.ErrorIs(t, requireReturns(t, done), jsonstream.ErrCanceled)
	})
	t.Run("NamedQueryContext", func(t *testing.T) {
		const named = "SELECT id FROM documents WHERE kind = :kind ORDER BY id"
		s := newStream(t)
		rows, err := db.NamedQueryContext(jsonstream.ContextWithStream(bg, s), named, map[string]any{"kind": "a"})
		require.NoError(t, err)
		pauseAndResume(t, s, rows)

		// Early close: the Stream's CloseCut cuts the connection.
		pid := backendPID(t, db)
		s = newStream(t, jsonstream.WithCloseMode(jsonstream.CloseCut))
		rows, err = db.NamedQueryContext(jsonstream.ContextWithStream(bg, s), named, map[string]any{"kind": "a"})
		require.NoError(t, err)
		closeEarly(t, s, rows, pid, func() int { return backendPID(t, db) }, true)
	})
	t.Run("JSON helpers on sqlx rows", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryxContext(jsonstream.ContextWithStream(bg, s), "SELECT data FROM documents WHERE kind = $1 ORDER BY id", "a")
		require.NoError(t, err)
		n := 0
		for doc, err := range jsonstream.Each[struct{ ID int64 }](rows.Rows) {
			require.NoError(t, err)
			n++
			require.Equal(t, int64(n), doc.ID)
		}
		assert.Equal(t, totalA, n)
		assert.Equal(t, jsonstream.Complete, s.State())
	})
}
