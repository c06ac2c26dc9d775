package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonstreamConn is jsonstream's conn under sc.
func jsonstreamConn(t *testing.T, sc *sql.Conn) *conn {
	t.Helper()
	var c *conn
	require.NoError(t, sc.Raw(func(dc any) error {
		c = dc.(*conn)
		return nil
	}))
	return c
}

// TestPortalRecycle: a portal stream that nothing else can reach after
// its Close leaves its portal to the connection, and the next portal
// stream takes that one (recycle.go); a stream that another goroutine or
// its Stream could still reach, or that left its end owed, leaves none.
// The connection serves the next query either way.
func TestPortalRecycle(t *testing.T) {
	const long = "SELECT g FROM generate_series(1, 100000) g"
	bg := context.Background()
	for _, tc := range []struct {
		name string
		// run runs a stream on conn and closes it; it reports nothing.
		run      func(t *testing.T, conn *sql.Conn)
		recycled bool
	}{
		{"QueryRow", func(t *testing.T, conn *sql.Conn) {
			var n int
			require.NoError(t, conn.QueryRowContext(bg, "SELECT 1").Scan(&n))
		}, true},
		{"QueryRow with an argument", func(t *testing.T, conn *sql.Conn) {
			var n int
			require.NoError(t, conn.QueryRowContext(bg, "SELECT $1::int", 7).Scan(&n))
		}, true},
		{"read to its end", func(t *testing.T, conn *sql.Conn) {
			rows, err := conn.QueryContext(bg, "SELECT g FROM generate_series(1, 100) g")
			require.NoError(t, err)
			require.Len(t, scanAll(t, rows), 100)
		}, true},
		{"in a transaction", func(t *testing.T, conn *sql.Conn) {
			tx, err := conn.BeginTx(bg, nil)
			require.NoError(t, err)
			var n int
			require.NoError(t, tx.QueryRowContext(bg, "SELECT 1").Scan(&n))
			require.NoError(t, tx.Rollback())
		}, true},
		{"closed early, its end owed without Sync", func(t *testing.T, conn *sql.Conn) {
			// The end's Sync timer would settle it from another goroutine
			// (TestPortalOwedEndRaces): held off, so that the end is seen
			// owed.
			old := owedSyncDelay
			owedSyncDelay = time.Hour
			defer func() { owedSyncDelay = old }()
			rows, err := conn.QueryContext(bg, long)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())
			c := jsonstreamConn(t, conn)
			require.True(t, c.sock.owes() && c.sock.syncPending.Load(), "the end is owed without its Sync")
		}, false},
		{"closed early in a transaction, its end owed", func(t *testing.T, conn *sql.Conn) {
			c := jsonstreamConn(t, conn)
			tx, err := conn.BeginTx(bg, nil)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback() }()
			rows, err := tx.QueryContext(bg, long)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())
			require.True(t, c.sock.owes(), "the end is owed")
			require.NoError(t, tx.Commit())
		}, false},
		{"a Stream", func(t *testing.T, conn *sql.Conn) {
			var n int
			require.NoError(t, conn.QueryRowContext(bg, "SELECT 1", mustStream(t)).Scan(&n))
		}, false},
		{"a context that can end", func(t *testing.T, conn *sql.Conn) {
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			var n int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&n))
		}, false},
		{"a transaction whose context can end", func(t *testing.T, conn *sql.Conn) {
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			tx, err := conn.BeginTx(ctx, nil)
			require.NoError(t, err)
			var n int
			require.NoError(t, tx.QueryRowContext(bg, "SELECT 1").Scan(&n))
			require.NoError(t, tx.Rollback())
		}, false},
		{"an observer", func(t *testing.T, conn *sql.Conn) {
			ctx, err := ContextWithOptions(bg, WithObserver(&recorder{}))
			require.NoError(t, err)
			var n int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&n))
		}, false},
		{"a resume key", func(t *testing.T, conn *sql.Conn) {
			ctx, err := ContextWithOptions(bg, WithResumeKey(Asc("g")))
			require.NoError(t, err)
			rows, err := conn.QueryContext(ctx, "SELECT g FROM generate_series(1, 3) g ORDER BY g")
			require.NoError(t, err)
			require.Len(t, scanAll(t, rows), 3)
		}, false},
		{"paused", func(t *testing.T, conn *sql.Conn) {
			// Through the driver: a Pause needs no Stream there.
			require.NoError(t, conn.Raw(func(dc any) error {
				r, err := dc.(driver.QueryerContext).QueryContext(bg, "SELECT g FROM generate_series(1, 3) g", nil)
				require.NoError(t, err)
				ctl := r.(Controller)
				require.NoError(t, ctl.Pause())
				require.NoError(t, ctl.Resume())
				dest := make([]driver.Value, 1)
				n := 0
				for r.Next(dest) == nil {
					n++
				}
				require.Equal(t, 3, n)
				return r.Close()
			}))
		}, false},
		{"canceled", func(t *testing.T, conn *sql.Conn) {
			require.NoError(t, conn.Raw(func(dc any) error {
				r, err := dc.(driver.QueryerContext).QueryContext(bg, "SELECT 1", nil)
				require.NoError(t, err)
				require.NoError(t, r.(Controller).Cancel())
				_ = r.Close()
				return nil
			}))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openPG(t, DriverName, "")
			conn := pinnedConn(t, db)
			c := jsonstreamConn(t, conn)
			tc.run(t, conn)
			spare := c.spare
			if !tc.recycled {
				require.Nil(t, spare, "a portal was kept")
			} else {
				require.NotNil(t, spare, "no portal was kept")
				assert.Equal(t, &portal{}, spare, "the kept portal is not cleared")
				// The next stream takes it while it is open, and leaves it
				// again.
				rows, err := conn.QueryContext(bg, "SELECT 1")
				require.NoError(t, err)
				assert.Nil(t, c.spare, "the open stream did not take the kept portal")
				require.NoError(t, rows.Close())
				assert.Same(t, spare, c.spare, "the next stream did not reuse the kept portal")
			}
			// The connection serves the next query.
			var n int
			require.NoError(t, conn.QueryRowContext(bg, "SELECT 42").Scan(&n))
			assert.Equal(t, 42, n)
			sessionClean(t, conn)
		})
	}
}

// TestRecycledRowsStayClosed: rows whose portal went to the next stream
// (recycle.go) stay the closed stream they were, for code that holds them
// through sql.Conn.Raw: their columns and column types are still theirs,
// a second Close and a Cancel do nothing, and the next stream on the
// connection reads on untouched.
func TestRecycledRowsStayClosed(t *testing.T) {
	db := openPG(t, DriverName, "")
	conn := pinnedConn(t, db)
	bg := context.Background()
	require.NoError(t, conn.Raw(func(dc any) error {
		q := dc.(driver.QueryerContext)
		r1, err := q.QueryContext(bg, "SELECT 1 AS a, 'x'::text AS b", nil)
		require.NoError(t, err)
		dest := make([]driver.Value, 2)
		require.NoError(t, r1.Next(dest))
		require.NoError(t, r1.Close())
		require.Nil(t, r1.(*rows).portal, "the portal was not recycled")

		r2, err := q.QueryContext(bg, "SELECT g AS c FROM generate_series(1, 2) g", nil)
		require.NoError(t, err)
		assert.NoError(t, r1.Close(), "a second Close")
		assert.ErrorIs(t, r1.(Controller).Cancel(), ErrStreamEnded)
		assert.ErrorIs(t, r1.(Controller).Pause(), ErrStreamEnded)
		assert.Equal(t, io.EOF, r1.Next(dest))
		assert.Equal(t, []string{"a", "b"}, r1.Columns())
		ct := r1.(driver.RowsColumnTypeDatabaseTypeName)
		assert.Equal(t, "INT4", ct.ColumnTypeDatabaseTypeName(0))
		assert.Equal(t, "TEXT", ct.ColumnTypeDatabaseTypeName(1))
		assert.Equal(t, int64(1), r1.(Controller).Stats().Rows)

		assert.Equal(t, Running, r2.(Controller).State(), "r1's Cancel reached r2")
		assert.Equal(t, []string{"c"}, r2.Columns())
		one := make([]driver.Value, 1)
		for want := int64(1); want <= 2; want++ {
			require.NoError(t, r2.Next(one))
			assert.Equal(t, want, one[0])
		}
		assert.Equal(t, io.EOF, r2.Next(one))
		assert.Equal(t, Complete, r2.(Controller).State())
		return r2.Close()
	}))
	sessionClean(t, conn)
}

// TestDescribeKeptFields: a stream whose RowDescription is the last
// one's, byte for byte, takes that one's fields (portal.describe) but has
// names of its own, which its caller may change.
func TestDescribeKeptFields(t *testing.T) {
	db := openPG(t, DriverName, "")
	conn := pinnedConn(t, db)
	c := jsonstreamConn(t, conn)
	bg := context.Background()
	query := func(q string) (names []string, fields []pgField) {
		require.NoError(t, conn.Raw(func(dc any) error {
			r, err := dc.(driver.QueryerContext).QueryContext(bg, q, nil)
			require.NoError(t, err)
			names, fields = r.Columns(), r.(*rows).portal.fields
			return r.Close()
		}))
		return names, fields
	}
	n1, f1 := query("SELECT 1 AS a, 2 AS b")
	require.Equal(t, []string{"a", "b"}, n1)
	n1[0] = "changed by the caller"
	n2, f2 := query("SELECT 3 AS a, 4 AS b")
	assert.Equal(t, []string{"a", "b"}, n2, "a caller's change reached the next stream's names")
	assert.Same(t, &f1[0], &f2[0], "the same description was read again")
	n3, f3 := query("SELECT 1 AS c")
	assert.Equal(t, []string{"c"}, n3)
	assert.NotSame(t, &f1[0], &f3[0])
	assert.Same(t, &f3[0], &c.descFields[0], "the last description is kept")
	// A description beyond descKept is not kept.
	wide := "SELECT 1 AS x"
	for i := 0; i*20 < descKept; i++ {
		wide += ", 1 AS col_" + strconv.Itoa(i)
	}
	query(wide)
	assert.Same(t, &f3[0], &c.descFields[0], "a large description was kept")
}
