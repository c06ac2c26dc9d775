package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQueryStartsAtTake holds the clock to one reading per use of a
// connection from the pool (idlepeek.go): the query that is the first call
// after database/sql took the conn starts at the take's reading, any other
// call reads its own, and the conn goes back with its last reading.
func TestQueryStartsAtTake(t *testing.T) {
	_, js := memDBs(t)
	ctx := context.Background()
	var got int
	require.NoError(t, js.QueryRow("SELECT 1").Scan(&got), "a conn in the pool, used once")
	// take takes the pool's conn through database/sql (ResetSession).
	take := func(t *testing.T) (*sql.Conn, *conn) {
		t.Helper()
		sc, err := js.Conn(ctx)
		require.NoError(t, err)
		c := jsonstreamConn(t, sc)
		require.True(t, c.taken, "ResetSession noted the take")
		return sc, c
	}
	queryRow := func(t *testing.T, sc *sql.Conn) {
		t.Helper()
		require.NoError(t, sc.QueryRowContext(ctx, "SELECT 1").Scan(&got))
	}

	t.Run("the first call", func(t *testing.T) {
		sc, c := take(t)
		took := c.usedAt
		queryRow(t, sc)
		assert.Equal(t, took, c.usedAt, "the query started at the take")
		assert.False(t, c.taken, "the take's reading is the first call's only")
		queryRow(t, sc)
		assert.Greater(t, c.usedAt, took, "a second query reads the clock")
		last := c.usedAt
		require.NoError(t, sc.Close())
		assert.Equal(t, last, c.pooledAt, "put back with the last reading")
	})
	t.Run("after another call", func(t *testing.T) {
		sc, c := take(t)
		took := c.usedAt
		_, err := sc.ExecContext(ctx, "SELECT 1")
		require.NoError(t, err)
		assert.False(t, c.taken, "an Exec ends the take's call")
		queryRow(t, sc)
		assert.Greater(t, c.usedAt, took, "the query after it reads the clock")
		require.NoError(t, sc.Close())
	})
	t.Run("unwrapped", func(t *testing.T) {
		sc, c := take(t)
		require.NoError(t, sc.Raw(func(dc any) error {
			_ = dc.(interface{ Unwrap() driver.Conn }).Unwrap()
			return nil
		}))
		assert.False(t, c.taken, "whoever has lib/pq's conn may use it first")
		require.NoError(t, sc.Close())
	})
}
