package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Cursor mode sends the caller's query inside a DECLARE of its own. The
// promise: for any query text, the statements that run are the ones
// lib/pq runs for the same text, or the query fails and nothing runs.

// smuggleTexts are query texts that try to run a statement beside the
// DECLARE, and texts that only look like it.
var smuggleTexts = []string{
	"SELECT 1) ; DELETE FROM victim; SELECT (1",
	"SELECT 1) ; DELETE FROM victim; SELECT (1 --",
	"WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	"SELECT 1) ; WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	"SELECT 1)/*x*/;DELETE FROM victim;/*y*/SELECT (1",
	"SELECT '\\') ; DELETE FROM victim; SELECT (\\''",
	"SELECT '\\'); DELETE FROM victim; SELECT ('",
	"SELECT E'\\'); DELETE FROM victim; SELECT ('",
	"SELECT $$) ; DELETE FROM victim; SELECT ($$",
	"SELECT $a$) ; DELETE FROM victim; SELECT ($a$",
	"SELECT $ 1) ; DELETE FROM victim; SELECT (1",
	"SELECT \"x\") ; DELETE FROM victim; SELECT (\"y\"",
	"SELECT 1 -- ) ; DELETE FROM victim; SELECT (1\n",
	"SELECT /* ) ; DELETE FROM victim; SELECT ( */ 1",
	"SELECT /* /* */ ) ; DELETE FROM victim; SELECT ( */ 1",
	"SELECT 1; DELETE FROM victim",
	"DELETE FROM victim RETURNING x",
	"SELECT x FROM victim ORDER BY x",
	"SELECT 'a)' || $$b;$$ FROM victim",
	"SELEC 1",
	"SELECT (1",
	"SELECT 1)",
	"SELECT U&'\\0029'; DELETE FROM victim; SELECT ('",
	"SELECT 1 \\; DELETE FROM victim",
}

// victimState is what a run left in the victim table.
type victimState struct{ count, sum int64 }

// smuggleConn is one session with a temporary victim table: the same
// setup on a lib/pq connection and a jsonstream one.
type smuggleConn struct {
	conn *sql.Conn
}

func newSmuggleConn(t testing.TB, db *sql.DB) *smuggleConn {
	t.Helper()
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &smuggleConn{conn: conn}
}

// single is a Stream-free way to run the harness's own statements in the
// single-statement mode whatever the pool's mode.
func singleMode(t testing.TB) *Stream {
	s, err := NewStream(WithFetchSize(0))
	require.NoError(t, err)
	return s
}

// reset puts the victim table back to three rows, outside any
// transaction.
func (s *smuggleConn) reset(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	_, _ = s.conn.ExecContext(ctx, "ROLLBACK")
	_, err := s.conn.ExecContext(ctx, `CREATE TEMP TABLE IF NOT EXISTS victim (x int);
		DELETE FROM victim; INSERT INTO victim VALUES (1), (2), (3)`)
	require.NoError(t, err)
}

func (s *smuggleConn) state(t testing.TB, args ...any) victimState {
	t.Helper()
	var st victimState
	require.NoError(t, s.conn.QueryRowContext(context.Background(),
		"SELECT count(*), coalesce(sum(x), 0) FROM victim", args...).Scan(&st.count, &st.sum))
	return st
}

// run runs query on q and reads all it returns; it reports the error.
func runQuery(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string) error {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	for {
		for rows.Next() {
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		_ = rows.Close()
		return err
	}
	return rows.Close()
}

// smuggleOracle runs query through lib/pq and through jsonstream's cursor
// mode in autocommit, in BeginTx and after Exec("BEGIN"), and requires of
// each jsonstream run that it left the victim table untouched, or, when
// it succeeded, as lib/pq left it.
type smuggleOracle struct {
	pq, js *smuggleConn
}

func newSmuggleOracle(t testing.TB) *smuggleOracle {
	t.Helper()
	pqDB := openPG(t, "postgres", "options='-c statement_timeout=5000'")
	jsDB := openPG(t, DriverName, "jsonstream_fetch_size=auto options='-c statement_timeout=5000'")
	return &smuggleOracle{pq: newSmuggleConn(t, pqDB), js: newSmuggleConn(t, jsDB)}
}

func (o *smuggleOracle) check(t *testing.T, query string) {
	ctx := context.Background()
	o.pq.reset(t)
	untouched := o.pq.state(t)
	pqErr := runQuery(ctx, o.pq.conn, query)
	want := o.pq.state(t)
	o.pq.reset(t)

	judge := func(how string, err error, got victimState) {
		t.Helper()
		if got == untouched {
			return
		}
		assert.NoError(t, err, "%s: %q changed the table and failed", how, query)
		assert.Equal(t, want, got, "%s: %q ran other statements than lib/pq (lib/pq: %v)", how, query, pqErr)
	}

	o.js.reset(t)
	err := runQuery(ctx, o.js.conn, query)
	judge("autocommit", err, o.js.state(t, singleMode(t)))

	o.js.reset(t)
	tx, txErr := o.js.conn.BeginTx(ctx, nil)
	require.NoError(t, txErr)
	err = runQuery(ctx, tx, query)
	var got victimState
	if stateErr := tx.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(x), 0) FROM victim", singleMode(t)).Scan(&got.count, &got.sum); stateErr != nil {
		got = untouched // the transaction failed: nothing it did stays
	}
	_ = tx.Rollback()
	judge("BeginTx", err, got)

	o.js.reset(t)
	_, txErr = o.js.conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, txErr)
	err = runQuery(ctx, o.js.conn, query)
	if stateErr := o.js.conn.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(x), 0) FROM victim", singleMode(t)).Scan(&got.count, &got.sum); stateErr != nil {
		got = untouched
	}
	_, _ = o.js.conn.ExecContext(ctx, "ROLLBACK")
	judge(`Exec("BEGIN")`, err, got)
}

func TestCursorRunsNoSmuggledStatement(t *testing.T) {
	o := newSmuggleOracle(t)
	for _, q := range smuggleTexts {
		t.Run(q, func(t *testing.T) { o.check(t, q) })
	}
}

// TestCursorSmugglingExamples pins the two texts of the report: lib/pq
// refuses them with a syntax error and nothing runs; so does cursor mode,
// with the same error, in autocommit, BeginTx and after Exec("BEGIN").
func TestCursorSmugglingExamples(t *testing.T) {
	o := newSmuggleOracle(t)
	ctx := context.Background()
	for _, q := range []string{
		"SELECT 1) ; DELETE FROM victim; SELECT (1",
		"SELECT 1) ; WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1",
	} {
		t.Run(q, func(t *testing.T) {
			o.pq.reset(t)
			pqErr := runQuery(ctx, o.pq.conn, q)
			var want *pq.Error
			require.True(t, errors.As(pqErr, &want), "lib/pq: %v", pqErr)
			o.js.reset(t)
			before := o.js.state(t, singleMode(t))
			err := runQuery(ctx, o.js.conn, q)
			var got *pq.Error
			require.True(t, errors.As(err, &got), "%v", err)
			assert.Equal(t, want.Code, got.Code)
			assert.Equal(t, want.Message, got.Message)
			assert.Equal(t, want.Position, got.Position)
			assert.NotErrorIs(t, err, ErrCursorQuery, "a syntax error is the server's")
			assert.Equal(t, before, o.js.state(t, singleMode(t)), "nothing ran")
		})
	}
}

// TestCursorSyntaxErrorIsTheServers: a query with a syntax error gets the
// server's error, as through lib/pq, not ErrCursorQuery.
func TestCursorSyntaxErrorIsTheServers(t *testing.T) {
	pqDB := openPG(t, "postgres", "")
	jsDB := openCursorPG(t, "jsonstream_fetch_size=auto")
	for _, q := range []string{"SELEC 1", "SELECT 1 +", "SELECT (1", "SELECT 'open"} {
		t.Run(q, func(t *testing.T) {
			_, pqErr := pqDB.Query(q)
			want, ok := pqErr.(*pq.Error) //nolint:errorlint // lib/pq returns it unwrapped
			require.True(t, ok, "%v", pqErr)
			_, err := jsDB.Query(q)
			got, ok := err.(*pq.Error) //nolint:errorlint // passed on unwrapped
			require.True(t, ok, "%T %v", err, err)
			assert.Equal(t, *want, *got)
			sessionClean(t, jsDB)
		})
	}
}

// FuzzCursorStatements mutates query texts (parentheses, comments,
// quotes, dollar quotes, semicolons) and asks the server what ran.
func FuzzCursorStatements(f *testing.F) {
	for _, q := range smuggleTexts {
		f.Add(q)
	}
	o := newSmuggleOracle(f)
	f.Fuzz(func(t *testing.T, query string) {
		if len(query) > 300 {
			return
		}
		o.check(t, query)
	})
}

// TestCursorSmugglingInSJIS: in a session whose client_encoding is SJIS
// (lib/pq checks it only at connect time), byte 0x5C can be the second
// byte of a character, which the server does not read as a backslash.
func TestCursorSmugglingInSJIS(t *testing.T) {
	ctx := context.Background()
	for _, q := range []string{
		"SELECT E'\x95\\' ) ; DELETE FROM victim ; SELECT ( $$'--$$",
		"SELECT '\x95\\\\' ) ; DELETE FROM victim ; SELECT ( '",
	} {
		t.Run(q, func(t *testing.T) {
			js := newSmuggleConn(t, openPG(t, DriverName, "jsonstream_fetch_size=auto"))
			js.reset(t)
			for _, set := range []string{"SET client_encoding TO 'SJIS'", "SET standard_conforming_strings TO off"} {
				_, err := js.conn.ExecContext(ctx, set)
				require.NoError(t, err)
				_ = runQuery(ctx, js.conn, q)
			}
			_, err := js.conn.ExecContext(ctx, "RESET client_encoding; RESET standard_conforming_strings")
			require.NoError(t, err)
			assert.Equal(t, victimState{3, 6}, js.state(t, singleMode(t)), "a statement beside the DECLARE ran")
		})
	}
}
