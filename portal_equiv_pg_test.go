package jsonstream

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Differential tests of the portal mode against lib/pq alone, for what a
// portal stream has to do as lib/pq does beyond decoding values: prepared
// statements, the description of the columns, the session's settings
// after an owed end, and the texts lib/pq keeps to itself.

// errText shows an error with its type, so that lib/pq's own errors and
// the server's compare as different.
func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%T %v", err, err)
}

// inDefaultMode runs f through lib/pq and through jsonstream in its
// default mode, on one connection each, and compares what it returns.
func inDefaultMode[T any](t *testing.T, f func(t *testing.T, db *sql.DB) T) {
	t.Helper()
	bothIn(t, []string{""}, func(t *testing.T, db *sql.DB) T {
		db.SetMaxOpenConns(1)
		return f(t, db)
	})
}

// TestPortalStmtBindsThePreparedStatement: a prepared statement's query
// binds the statement lib/pq prepared, not its text parsed again. After
// ALTER TABLE the server refuses it (its result would have changed), as
// through lib/pq, where a new parse would return the new columns.
func TestPortalStmtBindsThePreparedStatement(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		_, err := db.Exec("DROP TABLE IF EXISTS equiv_stmt_cols; CREATE TABLE equiv_stmt_cols (a int); INSERT INTO equiv_stmt_cols VALUES (1)")
		require.NoError(t, err)
		st, err := db.Prepare("SELECT * FROM equiv_stmt_cols")
		require.NoError(t, err)
		defer func() { _ = st.Close() }()
		var out []string
		query := func() {
			rows, err := st.Query()
			if err != nil {
				out = append(out, errText(err))
				return
			}
			cols, err := rows.Columns()
			require.NoError(t, err)
			out = append(out, fmt.Sprint(cols), errText(rows.Close()))
		}
		query()
		query() // with the description the first query asked for
		_, err = db.Exec("ALTER TABLE equiv_stmt_cols ADD COLUMN b text")
		require.NoError(t, err)
		query()
		return out
	})
}

// TestPortalStmtRunsWhatWasPrepared: what the server fixed when the
// statement was prepared stays: a constant read in the session's
// TimeZone of the Prepare, and a string literal read under the
// standard_conforming_strings of the Prepare.
func TestPortalStmtRunsWhatWasPrepared(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		_, err := db.Exec("SET TimeZone = 'UTC'")
		require.NoError(t, err)
		lit, err := db.Prepare("SELECT '2024-01-01 00:00'::timestamptz")
		require.NoError(t, err)
		defer func() { _ = lit.Close() }()
		length, err := db.Prepare(`SELECT length('a\nb')`)
		require.NoError(t, err)
		defer func() { _ = length.Close() }()
		_, err = db.Exec("SET TimeZone = 'Asia/Tokyo'; SET standard_conforming_strings = off; SET escape_string_warning = off")
		require.NoError(t, err)
		var ts time.Time
		var n int
		errTS := lit.QueryRow().Scan(&ts)
		errN := length.QueryRow().Scan(&n)
		return []string{ts.UTC().Format(time.RFC3339), errText(errTS), fmt.Sprint(n), errText(errN)}
	})
}

// TestPortalStmtErrorHasNoQueryText: lib/pq attaches no query text to a
// prepared statement's error, so the error reads without a position.
func TestPortalStmtErrorHasNoQueryText(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		_, err := db.Exec("DROP TABLE IF EXISTS equiv_stmt_gone; CREATE TABLE equiv_stmt_gone (a int)")
		require.NoError(t, err)
		st, err := db.Prepare("SELECT a FROM equiv_stmt_gone")
		require.NoError(t, err)
		defer func() { _ = st.Close() }()
		_, err = db.Exec("DROP TABLE equiv_stmt_gone")
		require.NoError(t, err)
		var n int
		err = st.QueryRow().Scan(&n)
		var pe *pq.Error
		require.ErrorAs(t, err, &pe)
		return []string{errText(err), pe.ErrorWithDetail()}
	})
}

// TestPortalStmtStreams: a prepared statement's query is a portal stream,
// by the name lib/pq gave the statement, with arguments of every kind
// encoded as lib/pq encodes them for it.
func TestPortalStmtStreams(t *testing.T) {
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	rec := &recorder{}
	ctx, err := ContextWithOptions(context.Background(), WithObserver(rec))
	require.NoError(t, err)
	st, err := db.PrepareContext(ctx, "SELECT $1::bytea, $2::text, g FROM generate_series(1, $3::int) g")
	require.NoError(t, err)
	defer func() { _ = st.Close() }()
	for i := 0; i < 2; i++ {
		rows, err := st.QueryContext(ctx, []byte(`a\b`), "é", 100)
		require.NoError(t, err)
		n := 0
		for rows.Next() {
			var b []byte
			var s string
			var g int
			require.NoError(t, rows.Scan(&b, &s, &g))
			assert.Equal(t, []byte(`a\b`), b)
			assert.Equal(t, "é", s)
			n++
			if n == 20 {
				break // early: the connection stays
			}
		}
		require.NoError(t, rows.Close())
		assert.Equal(t, 20, n)
	}
	var started int
	for _, e := range rec.all() {
		if e.Kind == EventStarted {
			started++
			assert.Equal(t, ModePortal, e.Mode)
		}
	}
	assert.Equal(t, 2, started)
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one))
}

// TestPortalStmtWithoutNameIsLibPQs: a prepared statement whose name on
// the server jsonstream did not see runs as lib/pq runs it; WithStreamMode
// (ModePortal) refuses it.
func TestPortalStmtWithoutNameIsLibPQs(t *testing.T) {
	db := openPG(t, DriverName, "")
	sc, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer func() { _ = sc.Close() }()
	require.NoError(t, sc.Raw(func(dc any) error {
		ctx := context.Background()
		ds, err := dc.(*conn).PrepareContext(ctx, "SELECT 1")
		require.NoError(t, err)
		defer func() { _ = ds.Close() }()
		st := ds.(*stmt)
		require.NotEmpty(t, st.name, "the name of lib/pq's Parse")
		st.name = ""
		dr, err := st.QueryContext(ctx, nil)
		require.NoError(t, err)
		assert.Nil(t, dr.(*rows).portal, "a single statement, as lib/pq runs it")
		require.NoError(t, dr.Close())
		portalCtx, err := ContextWithOptions(ctx, WithStreamMode(ModePortal))
		require.NoError(t, err)
		_, err = st.QueryContext(portalCtx, nil)
		require.ErrorIs(t, err, ErrPortalQuery)
		assert.ErrorContains(t, err, "prepared statement's name")
		return nil
	}))
}

// TestStmtName reads the statement's name off lib/pq's Parse.
func TestStmtName(t *testing.T) {
	parse := func(name string) []byte {
		w := &wire{}
		at := w.begin('P')
		w.cstring(name)
		w.cstring("SELECT 1")
		w.int16(0)
		w.end(at)
		w.describe('S')
		w.sync()
		return w.out
	}
	assert.Equal(t, "7", stmtName(parse("7")))
	assert.Equal(t, "", stmtName(parse("")), "the unnamed statement")
	assert.Equal(t, "", stmtName([]byte("Q\x00\x00\x00\x0dSELECT 1\x00")), "not a Parse")
	assert.Equal(t, "", stmtName(parse("7")[:4]), "short")
	bad := parse("7")
	bad[4] = 200 // a length past the write
	assert.Equal(t, "", stmtName(bad))
}

// TestPortalColumnTypesWithArguments: a query with arguments has its
// columns described as lib/pq describes them (its statement, before
// planning), where the portal's description would give a length, a
// precision or a scale that folding constants kept.
func TestPortalColumnTypesWithArguments(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		var out []string
		for _, c := range []struct {
			q   string
			arg any
		}{
			{"SELECT COALESCE($1::varchar(5), 'x')", "ab"},
			{"SELECT COALESCE($1::numeric(10,2), 0)", "1.5"},
			{"SELECT CASE WHEN $1::bool THEN 1.25::numeric(6,2) ELSE 2 END", true},
			{"SELECT COALESCE($1::bpchar(3), 'xyzzy')", "a"},
		} {
			rows, err := db.Query(c.q, c.arg)
			require.NoError(t, err)
			cts, err := rows.ColumnTypes()
			require.NoError(t, err)
			for _, ct := range cts {
				l, lok := ct.Length()
				p, s, pok := ct.DecimalSize()
				out = append(out, fmt.Sprintf("%s: %s len=%d/%v dec=%d,%d/%v", c.q, ct.DatabaseTypeName(), l, lok, p, s, pok))
			}
			require.NoError(t, rows.Close())
		}
		return out
	})
}

// TestPortalParameterCountWhenTheScanIsUnsure: with
// standard_conforming_strings off, a backslash ends no string for the
// server, so the scan's count of parameters may be wrong; the server's
// decides, as lib/pq's error says.
func TestPortalParameterCountWhenTheScanIsUnsure(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		_, err := db.Exec("SET standard_conforming_strings = off; SET escape_string_warning = off")
		require.NoError(t, err)
		var s sql.NullString
		err = db.QueryRow(`SELECT 'x\' || $1::text || '''`, "v").Scan(&s)
		var one int
		after := db.QueryRow("SELECT 1").Scan(&one)
		return []string{fmt.Sprint(s), errText(err), errText(after)}
	})
}

// TestPortalEmptyByteaOfBinaryResults: where lib/pq asks for bytea
// results in binary (a query with arguments, a prepared statement), an
// empty one is an empty slice, not nil, also when the server writes bytea
// in the escape format; without arguments lib/pq reads text, and nil.
func TestPortalEmptyByteaOfBinaryResults(t *testing.T) {
	for _, extra := range []string{"", "disable_prepared_binary_result=yes", "binary_parameters=yes"} {
		t.Run("dsn="+extra, func(t *testing.T) {
			read := func(t *testing.T, db *sql.DB) []string {
				db.SetMaxOpenConns(1)
				_, err := db.Exec("SET bytea_output = escape")
				require.NoError(t, err)
				st, err := db.Prepare("SELECT ''::bytea, $1::int")
				require.NoError(t, err)
				defer func() { _ = st.Close() }()
				var out []string
				for _, row := range []func() *sql.Row{
					func() *sql.Row { return db.QueryRow("SELECT ''::bytea, 1") },
					func() *sql.Row { return db.QueryRow("SELECT ''::bytea, $1::int", 1) },
					func() *sql.Row { return st.QueryRow(1) },
				} {
					var b any
					var n int
					err := row().Scan(&b, &n)
					out = append(out, fmt.Sprintf("%#v nil=%v %s", b, b.([]byte) == nil, errText(err)))
				}
				return out
			}
			want := read(t, openPG(t, "postgres", extra))
			got := read(t, openPG(t, DriverName, extra))
			assert.Equal(t, want, got, "jsonstream differs from lib/pq")
		})
	}
}

// TestPortalLeavesTextsWithNULToLibPQ: a text with a NUL byte ends in a
// different message for the server in a simple Query than in a Parse: it
// goes to lib/pq, whose error it gets.
func TestPortalLeavesTextsWithNULToLibPQ(t *testing.T) {
	inDefaultMode(t, func(_ *testing.T, db *sql.DB) []string {
		var out []string
		for _, q := range []string{"SELECT 1\x00", "SELECT 1\x00 garbage", "SELECT $1::int\x00"} {
			var n sql.NullInt64
			var err error
			if q == "SELECT $1::int\x00" {
				err = db.QueryRow(q, 5).Scan(&n)
			} else {
				err = db.QueryRow(q).Scan(&n)
			}
			var one int
			after := db.QueryRow("SELECT 1").Scan(&one)
			out = append(out, fmt.Sprintf("%q: %v %s; after: %s", q, n, errText(err), errText(after)))
		}
		return out
	})
	assert.Equal(t, "it holds a NUL byte", portalText(scanQuery("SELECT 1\x00"), false))
}

// settingChangedInTx runs, in a transaction on db, a read that sets name
// to value past its first batch, closes it early (its end is owed:
// owed.go) and returns what next gives twice.
func settingChangedInTx(t *testing.T, db *sql.DB, name, value string, next func(tx *sql.Tx) string) []string {
	tx, err := db.Begin()
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.Query(`SELECT CASE WHEN g = 20 THEN set_config($1, $2, false) END, g FROM generate_series(1, 2000) g`, name, value)
	require.NoError(t, err)
	for i := 0; i < 30; i++ {
		require.True(t, rows.Next())
	}
	require.NoError(t, rows.Close())
	return []string{next(tx), next(tx)}
}

// TestPortalTimeZoneAfterAnOwedEnd: the next stream decodes timestamptz
// in the TimeZone that the owed end's replies report, though it was sent
// before they were read.
func TestPortalTimeZoneAfterAnOwedEnd(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		_, err := db.Exec("SET TimeZone = 'UTC'")
		require.NoError(t, err)
		return settingChangedInTx(t, db, "TimeZone", "Asia/Tokyo", func(tx *sql.Tx) string {
			var ts time.Time
			err := tx.QueryRow("SELECT '2024-01-01 00:00+00'::timestamptz").Scan(&ts)
			return fmt.Sprintf("%s %s %s", ts, ts.Location(), errText(err))
		})
	})
}

// TestPortalClientEncodingAfterAnOwedEnd: while an end is owed, its
// replies may change the client encoding, so a bytea argument is encoded
// as for one that is not UTF8 (lib/pq's hex): the bytes stored are the
// argument's.
func TestPortalClientEncodingAfterAnOwedEnd(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		return settingChangedInTx(t, db, "client_encoding", "LATIN1", func(tx *sql.Tx) string {
			var hex string
			err := tx.QueryRow("SELECT encode($1::bytea, 'hex')", "é").Scan(&hex)
			return hex + " " + errText(err)
		})
	})
}

// TestPortalQueryRowStopsBeforeLaterErrors: a QueryRow stops its query
// after the first row, so an error of a later row never comes: lib/pq's
// Row.Scan returns the error its Close met reading on, and aborts the
// transaction it runs in; the portal stream returns the row, and the
// transaction goes on.
func TestPortalQueryRowStopsBeforeLaterErrors(t *testing.T) {
	const q = "SELECT 1/(g-40) FROM generate_series(1, 100) g"
	run := func(t *testing.T, db *sql.DB) (scanErr, commitErr error) {
		tx, err := db.Begin()
		require.NoError(t, err)
		var n int
		scanErr = tx.QueryRow(q).Scan(&n)
		return scanErr, tx.Commit()
	}
	scanErr, commitErr := run(t, openPG(t, "postgres", ""))
	var pe *pq.Error
	require.ErrorAs(t, scanErr, &pe, "lib/pq")
	assert.Equal(t, "22012", string(pe.Code))
	assert.Error(t, commitErr, "lib/pq: the transaction aborted")
	scanErr, commitErr = run(t, openPG(t, DriverName, ""))
	assert.NoError(t, scanErr, "jsonstream")
	assert.NoError(t, commitErr, "jsonstream: the transaction goes on")
}
