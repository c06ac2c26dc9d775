package jsonstream

import (
	"context"
	"database/sql/driver"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCursorProbesAfterUnwrap: once the inner conn was handed out
// (sql.Conn.Raw), jsonstream asks the server whether a transaction is
// open.
func TestCursorProbesAfterUnwrap(t *testing.T) {
	d := &scriptDB{rows: 3}
	db := openScript(t, d, WithFetchSize(2))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Raw(func(dc any) error {
		inner := dc.(interface{ Unwrap() driver.Conn }).Unwrap()
		q := dc.(driver.QueryerContext)
		r, err := q.QueryContext(ctx, "SELECT data FROM docs", nil)
		require.NoError(t, err)
		dest := make([]driver.Value, 1)
		for err == nil {
			err = r.Next(dest)
		}
		require.NoError(t, r.Close())

		_, err = inner.(driver.ExecerContext).ExecContext(ctx, "BEGIN", nil)
		require.NoError(t, err)
		d.reset()
		r, err = q.QueryContext(ctx, "SELECT data FROM docs", nil)
		require.NoError(t, err)
		require.NotEqual(t, io.EOF, r.Next(dest))
		require.NoError(t, r.Close())
		return nil
	}))
	assert.NotContains(t, d.statements(), "ROLLBACK", "jsonstream rolled back the caller's transaction: %q", d.statements())
}
