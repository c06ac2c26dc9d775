package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQueryStartsAtItsCall holds a query's start (Stats.FirstRow's origin,
// the portal's first round-trip sample, the age an owed end is judged by)
// to the call that runs it, never to when database/sql took the conn from
// its pool: a sql.Conn may hold the conn unused for any time first, and a
// call that failed before it ran anything leaves nothing behind for the
// next. It also holds the conn's return to the pool to its last reading
// (idlepeek.go).
func TestQueryStartsAtItsCall(t *testing.T) {
	_, js := memDBs(t)
	ctx := context.Background()
	var got int
	require.NoError(t, js.QueryRow("SELECT 1").Scan(&got), "a conn in the pool, used once")
	// hold takes the pool's conn through database/sql (ResetSession) and
	// holds it unused for a while.
	hold := func(t *testing.T) (*sql.Conn, *conn) {
		t.Helper()
		sc, err := js.Conn(ctx)
		require.NoError(t, err)
		c := jsonstreamConn(t, sc)
		time.Sleep(20 * time.Millisecond)
		return sc, c
	}
	// query runs a Stream's QueryRow on sc, and checks that it started at
	// or after before, and that its FirstRow counts from there.
	query := func(t *testing.T, sc *sql.Conn, c *conn, before instant) {
		t.Helper()
		st := mustStream(t)
		require.NoError(t, sc.QueryRowContext(ctx, "SELECT 1", st).Scan(&got))
		since := before.elapsed()
		assert.GreaterOrEqual(t, c.usedAt, before, "the query started at its call")
		first := st.Stats().FirstRow
		assert.Positive(t, first)
		assert.LessOrEqual(t, first, since, "FirstRow counts from the call, not from the take")
	}

	t.Run("the first call after a held take", func(t *testing.T) {
		sc, c := hold(t)
		query(t, sc, c, clock())
		last := c.usedAt
		require.NoError(t, sc.Close())
		assert.Equal(t, last, c.pooledAt, "put back with the last reading")
	})
	t.Run("after a call that failed before it ran", func(t *testing.T) {
		sc, c := hold(t)
		_, err := sc.ExecContext(ctx, "SELECT 1", mustStream(t))
		require.ErrorIs(t, err, errStreamOnExec)
		time.Sleep(20 * time.Millisecond)
		query(t, sc, c, clock())
		require.NoError(t, sc.Close())
	})
	t.Run("a second call", func(t *testing.T) {
		sc, c := hold(t)
		query(t, sc, c, clock())
		time.Sleep(20 * time.Millisecond)
		query(t, sc, c, clock())
		require.NoError(t, sc.Close())
	})
}
