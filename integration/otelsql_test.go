package integration

import (
	"context"
	"testing"

	"github.com/XSAM/otelsql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jsonstream/jsonstream"
)

// TestOtelsql: otelsql wraps jsonstream, and a Stream still reaches
// jsonstream through the tracing wrapper, as an argument (otelsql hands
// it to jsonstream's NamedValueChecker) and in the context (otelsql
// passes the context on).
func TestOtelsql(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	db, err := otelsql.Open(jsonstream.DriverName, dsn(t), otelsql.WithTracerProvider(tp))
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	bg := context.Background()

	traced := func(t *testing.T) {
		t.Helper()
		n := 0
		for _, s := range spans.Ended() {
			if s.Name() == "sql.conn.query" {
				n++
			}
		}
		assert.Positive(t, n, "no query span: otelsql was not in the path")
	}

	t.Run("Stream argument", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryContext(bg, idsOfKind, "a", s)
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
		s = newStream(t)
		rows, err = db.QueryContext(bg, idsOfKind, "a", s)
		require.NoError(t, err)
		cancelPaused(t, s, rows)
		traced(t)
	})
	t.Run("context Stream", func(t *testing.T) {
		s := newStream(t)
		rows, err := db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
		s = newStream(t)
		rows, err = db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		cancelPaused(t, s, rows)
		traced(t)
	})
	t.Run("prepared statement", func(t *testing.T) {
		stmt, err := db.PrepareContext(bg, idsOfKind)
		require.NoError(t, err)
		defer stmt.Close()
		s := newStream(t)
		rows, err := stmt.QueryContext(jsonstream.ContextWithStream(bg, s), "a")
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
		s = newStream(t)
		rows, err = stmt.QueryContext(bg, "a", s)
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
	})
	t.Run("early close", func(t *testing.T) {
		pid := backendPID(t, db)
		s := newStream(t, jsonstream.WithCloseMode(jsonstream.CloseCut))
		rows, err := db.QueryContext(jsonstream.ContextWithStream(bg, s), idsOfKind, "a")
		require.NoError(t, err)
		closeEarly(t, s, rows, pid, func() int { return backendPID(t, db) }, true)
	})
	t.Run("the rule holds through the wrapper", func(t *testing.T) {
		ctx := jsonstream.ContextWithStream(bg, newStream(t))
		rows, err := db.QueryContext(ctx, idsOfKind, "b")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		_, err = db.QueryContext(ctx, idsOfKind, "b")
		require.ErrorIs(t, err, jsonstream.ErrStreamArgument)
	})
}
