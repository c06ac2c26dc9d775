package jsonstream

import (
	"database/sql"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An early Close stops a read, never a write: a statement that changes
// data ends as lib/pq ends it, read to its end and committed, whatever
// the close mode.

// writeStatements change 200,000 rows of close_writes, far more than a
// drain timeout's worth.
var writeStatements = []string{
	"INSERT INTO close_writes SELECT g FROM generate_series(200001, 400000) g RETURNING x, repeat('x', 100)",
	"UPDATE close_writes SET x = x + 1000000 RETURNING x, repeat('x', 100)",
	"DELETE FROM close_writes WHERE x > 0 RETURNING x, repeat('x', 100)",
	"WITH d AS (DELETE FROM close_writes RETURNING x) SELECT x, repeat('x', 100) FROM d",
	"with u as (update close_writes set x = -x returning x) select x, repeat('x', 100) from u",
}

// tableAfter runs query on db, reads one row, closes the rows and
// returns the table's row count and sum.
func tableAfter(t *testing.T, db *sql.DB, query string, args ...any) [2]int64 {
	t.Helper()
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE TABLE IF NOT EXISTS close_writes (x bigint);
		TRUNCATE close_writes; INSERT INTO close_writes SELECT g FROM generate_series(1, 200000) g`)
	require.NoError(t, err)
	rows, err := db.Query(query, args...)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	var st [2]int64
	require.NoError(t, setup.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM close_writes").Scan(&st[0], &st[1]))
	return st
}

func TestEarlyCloseNeverCutsAWrite(t *testing.T) {
	for _, q := range writeStatements {
		t.Run(q, func(t *testing.T) {
			want := tableAfter(t, openPG(t, "postgres", ""), q)
			for _, mode := range []CloseMode{CloseAuto, CloseCut} {
				got := tableAfter(t, openPG(t, DriverName, ""), q, mustStream(t, WithCloseMode(mode)))
				assert.Equal(t, want, got, "%s: the early Close changed what the statement wrote", mode)
			}
		})
	}
}

// TestEarlyCloseCutsARead: the same table read with a SELECT is cut (the
// connection's server process is replaced), so the rule above is not a
// drain of everything.
func TestEarlyCloseCutsARead(t *testing.T) {
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	tableAfter(t, db, "SELECT x FROM close_writes, generate_series(1, 10)")
	assert.NotEqual(t, before, pidOf(t, db), "the read was cut")
}

// TestEarlyCloseOfWritingFunction pins the documented exception: a SELECT
// that calls a function that writes is a read to jsonstream, which cannot
// see into the function. An early Close stops it, and what the function
// wrote is rolled back with it; CloseDrain ends it as lib/pq does.
func TestEarlyCloseOfWritingFunction(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE OR REPLACE FUNCTION close_writes_log(v bigint) RETURNS bigint
		LANGUAGE sql AS 'INSERT INTO close_writes VALUES (-v) RETURNING v'`)
	require.NoError(t, err)
	const q = "SELECT close_writes_log(g) FROM generate_series(1, 200000) g"
	want := tableAfter(t, openPG(t, "postgres", ""), q)
	assert.Equal(t, int64(400000), want[0], "lib/pq lets it finish")
	stopped := tableAfter(t, openPG(t, DriverName, ""), q)
	assert.Equal(t, int64(200000), stopped[0], "an early Close stops the SELECT and what it wrote")
	drained := tableAfter(t, openPG(t, DriverName, ""), q, mustStream(t, WithCloseMode(CloseDrain)))
	assert.Equal(t, want, drained, "CloseDrain: as lib/pq")
}
