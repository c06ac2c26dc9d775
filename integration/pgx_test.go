package integration

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
)

// TestPgxInner: pgx's database/sql driver inside jsonstream, a Stream in
// the context. jsonstream cannot cut a connection that pgx dialed, so
// Cancel ends the stream on the client side and Close drains, keeping
// the connection.
func TestPgxInner(t *testing.T) {
	drv, err := jsonstream.NewDriver(stdlib.GetDefaultDriver())
	require.NoError(t, err)
	connector, err := drv.OpenConnector(dsn(t))
	require.NoError(t, err)
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	bg := context.Background()

	t.Run("pause and resume", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
	})
	t.Run("cancel", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		cancelPaused(t, s, rows)
	})
	t.Run("early close keeps the connection", func(t *testing.T) {
		pid := backendPID(t, db)
		s := newStream(t, jsonstream.WithCloseMode(jsonstream.CloseCut))
		rows, err := db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		closeEarly(t, s, rows, pid, func() int { return backendPID(t, db) }, false)
	})
	t.Run("a transaction shared by two calls", func(t *testing.T) {
		tx, err := db.BeginTx(bg, nil)
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		s := newStream(t)
		ctx := jsonstream.ContextWithStream(bg, s)
		rows, err := tx.QueryContext(ctx, idsOfKind, "a")
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
		_, err = tx.QueryContext(ctx, idsOfKind, "b")
		require.ErrorIs(t, err, jsonstream.ErrStreamArgument)
		var n int
		require.NoError(t, tx.QueryRowContext(bg, "SELECT count(*) FROM documents").Scan(&n), "the refusal left the transaction usable")
		assert.Equal(t, totalA+3, n)
		require.NoError(t, tx.Commit())
	})
}
