package integration

import (
	"context"
	"database/sql"
	_ "embed"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestMain starts a throwaway PostgreSQL on first use (or uses
// JSONSTREAM_TEST_DSN), stops it afterwards and fails the run if
// goroutines leaked.
func TestMain(m *testing.M) {
	// sqlx knows the placeholders of the drivers it has heard of; "$1" is
	// jsonstream's, as lib/pq's.
	sqlx.BindDriver(jsonstream.DriverName, sqlx.DOLLAR)
	os.Exit(pgtest.Main(m))
}

//go:embed sqlcdb/schema.sql
var schema string

// totalA is how many documents of kind "a" the table holds: ids 1 to
// totalA, enough that a result is still on its way when a test pauses it.
const totalA = 2000

// quiet is how long a paused stream must stay silent to count as held.
const quiet = 150 * time.Millisecond

var loaded struct {
	once sync.Once
	err  error
}

// testSchema holds the tables of these tests, so that a server given by
// JSONSTREAM_TEST_DSN keeps its own documents table.
const testSchema = "jsonstream_integration"

// dsn returns the test server's DSN, with the documents table of
// sqlcdb/schema.sql loaded (kind "a" ids 1..totalA, kind "b" three more)
// in testSchema, the DSN's search_path.
func dsn(t *testing.T) string {
	t.Helper()
	d := pgtest.DSN(t)
	switch {
	case !strings.Contains(d, "://"):
		d += " search_path=" + testSchema
	case strings.Contains(d, "?"):
		d += "&search_path=" + testSchema
	default:
		d += "?search_path=" + testSchema
	}
	loaded.once.Do(func() { loaded.err = load(d) })
	require.NoError(t, loaded.err)
	return d
}

func load(dsn string) error {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx := context.Background()
	for _, q := range []string{
		"CREATE SCHEMA IF NOT EXISTS " + testSchema,
		"DROP TABLE IF EXISTS documents",
		schema,
		`INSERT INTO documents
		 SELECT g, 'a', jsonb_build_object('id', g, 'pad', repeat('x', 100)) FROM generate_series(1, $1) g`,
		`INSERT INTO documents
		 SELECT g, 'b', jsonb_build_object('id', g) FROM generate_series(100001, 100003) g`,
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, totalA)
		}
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	var current string
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&current); err != nil {
		return err
	}
	if current != testSchema {
		return fmt.Errorf("the DSN's search_path did not apply: current schema %q", current)
	}
	return nil
}

// openJSONStream opens the test server through jsonstream (over lib/pq),
// with one connection, so that a cut connection shows as a new backend.
func openJSONStream(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open(jsonstream.DriverName, dsn(t))
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func newStream(t *testing.T, opts ...jsonstream.Option) *jsonstream.Stream {
	t.Helper()
	s, err := jsonstream.NewStream(opts...)
	require.NoError(t, err)
	return s
}

// rowReader is what *sql.Rows and *sqlx.Rows share.
type rowReader interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// nextID reads the next row's first column, an id.
func nextID(rows rowReader) (id int64, ok bool, err error) {
	if !rows.Next() {
		return 0, false, rows.Err()
	}
	err = rows.Scan(&id)
	return id, err == nil, err
}

type nextResult struct {
	id  int64
	ok  bool
	err error
}

func nextAsync(rows rowReader) <-chan nextResult {
	ch := make(chan nextResult, 1)
	go func() {
		var r nextResult
		r.id, r.ok, r.err = nextID(rows)
		ch <- r
	}()
	return ch
}

// requireHeld requires s to stay paused for quiet with no row delivered
// and done (a Next, or a whole generated call) still waiting.
func requireHeld[T any](t *testing.T, s *jsonstream.Stream, done <-chan T) {
	t.Helper()
	before := s.Stats().Rows
	select {
	case r := <-done:
		t.Fatalf("returned while paused: %+v", r)
	case <-time.After(quiet):
	}
	assert.Equal(t, jsonstream.Paused, s.State())
	assert.Equal(t, before, s.Stats().Rows, "a row was delivered while paused")
}

// pauseAndResume reads ten rows of an id query over kind "a", pauses s,
// requires the next row to be held, resumes, and requires every id from
// 1 to totalA exactly once, in order.
func pauseAndResume(t *testing.T, s *jsonstream.Stream, rows rowReader) {
	t.Helper()
	defer rows.Close()
	require.True(t, s.Started(), "the Stream did not reach the query")
	var ids []int64
	for len(ids) < 10 {
		id, ok, err := nextID(rows)
		require.NoError(t, err)
		require.True(t, ok)
		ids = append(ids, id)
	}
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	requireHeld(t, s, ch)
	require.NoError(t, s.Resume())
	r := <-ch
	for ; r.ok; r.id, r.ok, r.err = nextID(rows) {
		ids = append(ids, r.id)
	}
	require.NoError(t, r.err)
	requireEveryIDOnce(t, ids)
	assert.Equal(t, jsonstream.Complete, s.State())
	assert.Equal(t, int64(totalA), s.Stats().Rows)
}

func requireEveryIDOnce(t *testing.T, ids []int64) {
	t.Helper()
	require.Len(t, ids, totalA)
	for i, id := range ids {
		require.Equal(t, int64(i+1), id, "row %d", i)
	}
}

// cancelPaused reads a row, pauses s, and cancels it while a Next waits:
// the Next ends with ErrCanceled.
func cancelPaused(t *testing.T, s *jsonstream.Stream, rows rowReader) {
	t.Helper()
	defer rows.Close()
	_, ok, err := nextID(rows)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	requireHeld(t, s, ch)
	require.NoError(t, s.Cancel())
	select {
	case r := <-ch:
		assert.False(t, r.ok)
		assert.ErrorIs(t, r.err, jsonstream.ErrCanceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Cancel did not end the paused Next")
	}
	assert.Equal(t, jsonstream.Failed, s.State())
	assert.NoError(t, rows.Close())
}

// backendPID is the server process of db's connection; with one
// connection per pool, a new pid after a query means that query's
// connection was cut.
func backendPID(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var pid int
	require.NoError(t, q.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&pid))
	return pid
}

// closeEarly reads one row of rows, whose Stream s has CloseCut, and
// closes them: s is Closed and, when cut is set, the connection was cut
// (a new backend serves the next query); otherwise it was kept.
func closeEarly(t *testing.T, s *jsonstream.Stream, rows rowReader, pidBefore int, pidNow func() int, cut bool) {
	t.Helper()
	_, ok, err := nextID(rows)
	require.NoError(t, err)
	require.True(t, ok)
	start := time.Now()
	require.NoError(t, rows.Close())
	assert.Less(t, time.Since(start), time.Second)
	assert.Equal(t, jsonstream.Closed, s.State())
	assert.Equal(t, int64(1), s.Stats().Rows)
	assert.Equal(t, cut, pidNow() != pidBefore, "connection cut")
}

// requireQueryEnded requires the server process pid to stop the query:
// the process is idle (a portal stream's end kept the connection) or gone
// (a cut one's).
func requireQueryEnded(t *testing.T, pid int) {
	t.Helper()
	db, err := sql.Open("postgres", dsn(t))
	require.NoError(t, err)
	defer db.Close()
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'", pid).Scan(&n))
		return n == 0
	}, 5*time.Second, 10*time.Millisecond, "backend %d still runs the query", pid)
}
