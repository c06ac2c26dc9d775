package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// badOnceConnector is scriptDB whose first statement fails with
// driver.ErrBadConn: a pooled connection whose session the server ended
// (lib/pq reports a dead socket so), which database/sql retries on
// another connection.
type badOnceConnector struct {
	d      *scriptDB
	failed atomic.Bool
}

func (c *badOnceConnector) Connect(context.Context) (driver.Conn, error) {
	inner, _ := c.d.Open("")
	return &badOnceConn{scriptConn: inner.(*scriptConn), c: c}, nil
}
func (c *badOnceConnector) Driver() driver.Driver { return c.d }

type badOnceConn struct {
	*scriptConn
	c *badOnceConnector
}

func (b *badOnceConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	if b.c.failed.CompareAndSwap(false, true) {
		return nil, driver.ErrBadConn
	}
	return b.scriptConn.ExecContext(ctx, q, args)
}

func (b *badOnceConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	if b.c.failed.CompareAndSwap(false, true) {
		return nil, driver.ErrBadConn
	}
	return b.scriptConn.QueryContext(ctx, q, args)
}

// TestCursorClaimsStreamOnlyOnceRowsCome: a cursor query that fails leaves
// its Stream argument unclaimed, as the single-statement mode does.
func TestCursorClaimsStreamOnlyOnceRowsCome(t *testing.T) {
	for _, size := range []int{0, 10} {
		t.Run(fetchSizeString(size), func(t *testing.T) {
			d := &scriptDB{rows: 3}
			c, err := NewConnector(&badOnceConnector{d: d}, WithFetchSize(size))
			require.NoError(t, err)
			db := sql.OpenDB(c)
			defer db.Close()
			s := mustStream(t)
			rows, err := db.Query("SELECT data FROM docs", s)
			require.NoError(t, err, "database/sql retries a bad connection")
			_ = rows.Close()
		})
	}
}

// TestCursorFailedQueryLeavesContextStream: a cursor query that fails does
// not use up the context's Stream.
func TestCursorFailedQueryLeavesContextStream(t *testing.T) {
	for _, size := range []int{0, 10} {
		t.Run(fetchSizeString(size), func(t *testing.T) {
			d := &fakeDriver{newRows: countRows(2)}
			var inner driver.Connector = fakeConnector{d}
			if size != 0 {
				inner = &scriptDB{rows: 2, fail: map[string]error{"BEGIN; DECLARE jsonstream_cursor_1": sqlStateErr("42P01")}}
			}
			c, err := NewConnector(inner, WithFetchSize(size))
			require.NoError(t, err)
			db := sql.OpenDB(c)
			db.SetMaxOpenConns(1)
			defer db.Close()
			s := mustStream(t)
			ctx := ContextWithStream(context.Background(), s)
			if size != 0 {
				_, err = db.QueryContext(ctx, "SELECT data FROM nosuchtable")
				require.Error(t, err)
			} else {
				_, err = db.QueryContext(ctx, "fail")
				require.Error(t, err)
			}
			rows, err := db.QueryContext(ctx, "SELECT data FROM docs")
			if assert.NoError(t, err, "a query that fails before returning rows does not use up the Stream") {
				_ = rows.Close()
			}
		})
	}
}
