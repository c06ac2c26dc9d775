package jsonstream

import (
	"context"
	"database/sql"
	"net"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// openCounted opens a pool of one jsonstream connection whose read
// deadlines are counted.
func openCounted(t *testing.T, opts ...Option) (*sql.DB, *fakeDialer) {
	t.Helper()
	base, err := pq.NewConnector(pgtest.DSN(t))
	require.NoError(t, err)
	counter := &fakeDialer{}
	base.Dialer(NewDialer(counter))
	c, err := NewConnector(base, opts...)
	require.NoError(t, err)
	// NewConnector installs NewDialer(nil) on a bare *pq.Connector: put
	// the counting one back.
	base.Dialer(NewDialer(counter))
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db, counter
}

// TestQueryRowArmsNoDeadline: when the rest of a result is already in
// hand, as a QueryRow's usually is, CloseAuto's drain sets no read
// deadline, so it starts no timer; an early close that has to wait on the
// network arms one.
func TestQueryRowArmsNoDeadline(t *testing.T) {
	needRowsTable(t)
	db, counter := openCounted(t)
	first := pidOf(t, db)
	before := counter.deadlines()
	for i := 0; i < 200; i++ {
		var v int
		require.NoError(t, db.QueryRow("SELECT g FROM generate_series(1, 3) g").Scan(&v))
		require.NoError(t, db.QueryRowContext(context.Background(), "SELECT 1").Scan(&v))
	}
	assert.Equal(t, before, counter.deadlines(), "QueryRow set read deadlines")
	assert.Equal(t, first, pidOf(t, db), "QueryRow kept the connection")

	rows, err := db.Query(bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Greater(t, counter.deadlines(), before, "a drain that waits on the network arms its deadline")
}

// TestPortalQueryRowArmsNoDeadline: in the default (portal) mode, the end
// of a result read whole, which is all a one-row QueryRow leaves, waits
// for its Sync's ReadyForQuery without a read deadline, as lib/pq waits
// for its own; so a small query starts no timer. With a context that can
// end, the query's watch of it bounds the end only once it ends
// (TestPortalWholeResultEnd). A close with rows left (here, an early one)
// has a bound.
func TestPortalQueryRowArmsNoDeadline(t *testing.T) {
	needRowsTable(t)
	d := &fakeDialer{}
	db := openDialed(t, d)
	first := pidOf(t, db)
	before := d.deadlines()
	for i := 0; i < 200; i++ {
		var v int
		require.NoError(t, db.QueryRow("SELECT 1").Scan(&v))
		require.NoError(t, db.QueryRow("SELECT $1::int", i).Scan(&v))
		require.Equal(t, i, v)
	}
	assert.Equal(t, before, d.deadlines(), "QueryRow set read deadlines")
	assert.Equal(t, first, pidOf(t, db), "QueryRow kept the connection")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before = d.deadlines()
	for i := 0; i < 20; i++ {
		var v int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT $1::int", i).Scan(&v))
	}
	assert.Equal(t, before, d.deadlines(), "QueryRow with a context that can end set read deadlines")

	// An early close whose end is read before Close returns: one older
	// than owedEndMaxAge (owed.go).
	withOwedEndMaxAge(t, 0)
	before = d.deadlines()
	rows, err := db.Query(bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Greater(t, d.deadlines(), before, "an early close that waits on the network arms its deadline")
	assert.Equal(t, first, pidOf(t, db), "the early close kept the connection")
}

// TestDrainPastDeadlineKeepsSmallRemainder: a client that reaches its
// drain after the drain timeout (descheduled under load; here a timeout
// of 1 ns) still drains a small remainder that the server has already
// sent, and keeps the connection; a large remainder is cut.
func TestDrainPastDeadlineKeepsSmallRemainder(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, singleDSN+" jsonstream_drain_timeout=1ns")
	db.SetMaxOpenConns(1)
	first := pidOf(t, db)
	for i := 0; i < 20; i++ {
		rows, err := db.Query(bigQuery, 300) // about 35 KB, beyond lib/pq's buffer
		require.NoError(t, err)
		require.True(t, rows.Next())
		time.Sleep(20 * time.Millisecond) // the rest is in the kernel's buffer by now
		require.NoError(t, rows.Close())
		require.Equal(t, first, pidOf(t, db), "round %d: a small remainder was cut", i)
	}
	rows, err := db.Query(bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	start := time.Now()
	require.NoError(t, rows.Close())
	assert.Less(t, time.Since(start), closeBound)
	assert.NotEqual(t, first, pidOf(t, db), "a large remainder is cut")
}

func TestSockDrainRead(t *testing.T) {
	t.Run("outside a drain no deadline", func(t *testing.T) {
		f := newFakeSock()
		f.onRead = func(p []byte) (int, error) { return copy(p, "abc"), nil }
		s := f.netConn()
		n, err := s.Read(make([]byte, 8))
		require.NoError(t, err)
		assert.Equal(t, 3, n)
		assert.Zero(t, f.deadlines.Load())
		assert.True(t, s.endDrain(), "nothing to clear")
		assert.Zero(t, f.deadlines.Load())
	})
	t.Run("past the deadline a small remainder is read", func(t *testing.T) {
		f := graceSock()
		s := f.netConn()
		s.beginDrain(time.Now().Add(-time.Millisecond))
		n, err := s.Read(make([]byte, 8))
		require.NoError(t, err)
		assert.Equal(t, 4, n)
		assert.Equal(t, int64(2), f.deadlines.Load(), "armed, then the grace")
		assert.True(t, s.endDrain())
		assert.Equal(t, int64(3), f.deadlines.Load(), "cleared")
	})
	t.Run("past the deadline a large remainder is not", func(t *testing.T) {
		f := graceSock()
		s := f.netConn()
		s.beginDrain(time.Now().Add(-time.Millisecond))
		s.drained = drainGraceBytes
		_, err := s.Read(make([]byte, 8))
		assert.True(t, isTimeout(err))
		assert.Equal(t, int64(1), f.deadlines.Load(), "no grace")
	})
	t.Run("long past the deadline no grace", func(t *testing.T) {
		f := graceSock()
		s := f.netConn()
		s.beginDrain(time.Now().Add(-2 * drainGraceMax))
		_, err := s.Read(make([]byte, 8))
		assert.True(t, isTimeout(err))
	})
	t.Run("a deadline that cannot be set fails the read", func(t *testing.T) {
		f := newFakeSock()
		f.setOnDeadline(func(time.Time) error { return net.ErrClosed })
		s := f.netConn()
		s.beginDrain(time.Now().Add(time.Second))
		_, err := s.Read(make([]byte, 8))
		assert.ErrorIs(t, err, net.ErrClosed)
		assert.False(t, s.endDrain(), "a deadline that cannot be cleared is reported")
	})
}

// graceSock is a socket whose first read times out and whose next ones
// have data.
func graceSock() *fakeSock {
	f := newFakeSock()
	reads := 0
	f.onRead = func(p []byte) (int, error) {
		if reads++; reads == 1 {
			return 0, timeoutError{}
		}
		return copy(p, "data"), nil
	}
	return f
}
