// Package wraptest checks that jsonstream wraps drivers other than lib/pq:
// here pgx's database/sql driver, which the library's own module does not
// depend on.
package wraptest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openPgx returns the test server through pgx's stdlib driver, plain and
// wrapped by jsonstream.
func openPgx(t *testing.T) (plain, wrapped *sql.DB) {
	dsn := pgtest.DSN(t)
	plain, err := sql.Open("pgx", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = plain.Close() })
	drv, err := jsonstream.NewDriver(stdlib.GetDefaultDriver())
	require.NoError(t, err)
	connector, err := drv.OpenConnector(dsn) // pgx implements driver.DriverContext
	require.NoError(t, err)
	wrapped = sql.OpenDB(connector)
	t.Cleanup(func() { _ = wrapped.Close() })
	return plain, wrapped
}

func TestPgxInside(t *testing.T) {
	plain, wrapped := openPgx(t)
	const q = `SELECT g, jsonb_build_object('id', g), g::text || 'x', NULL::int FROM generate_series(1, 1000) g`
	read := func(db *sql.DB, args ...any) [][]any {
		rows, err := db.QueryContext(context.Background(), q, args...)
		require.NoError(t, err)
		defer rows.Close()
		var out [][]any
		for rows.Next() {
			vals := make([]any, 4)
			ptrs := []any{&vals[0], &vals[1], &vals[2], &vals[3]}
			require.NoError(t, rows.Scan(ptrs...))
			out = append(out, vals)
		}
		require.NoError(t, rows.Err())
		return out
	}
	want := read(plain)
	assert.Equal(t, want, read(wrapped), "values through the wrapper")

	s, err := jsonstream.NewStream()
	require.NoError(t, err)
	rows, err := wrapped.QueryContext(context.Background(), q, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	assert.Equal(t, jsonstream.Paused, s.State())
	require.NoError(t, s.Resume())
	n := 1
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 1000, n)
	assert.Equal(t, jsonstream.Complete, s.State())

	_, err = wrapped.Exec("SELECT 1/0")
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "got %T", err)
	assert.Equal(t, "22012", pgErr.Code)

	// Without jsonstream's dialer an early Close drains, as pgx does; the
	// connection stays usable.
	rows, err = wrapped.Query(`SELECT g FROM generate_series(1, 10000) g`)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	var one int
	require.NoError(t, wrapped.QueryRow("SELECT 1").Scan(&one))
}
