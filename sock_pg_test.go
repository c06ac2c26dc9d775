package jsonstream

import (
	"context"
	"database/sql"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// deadlineCounter dials plain connections that count their read
// deadlines.
type deadlineCounter struct{ n atomic.Int64 }

func (d *deadlineCounter) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	return &countingConn{Conn: c, n: &d.n}, err
}

func (d *deadlineCounter) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, timeout)
	return &countingConn{Conn: c, n: &d.n}, err
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) SetReadDeadline(t time.Time) error {
	c.n.Add(1)
	return c.Conn.SetReadDeadline(t)
}

// openCounted opens a pool of one jsonstream connection whose read
// deadlines are counted.
func openCounted(t *testing.T, opts ...Option) (*sql.DB, *deadlineCounter) {
	t.Helper()
	base, err := pq.NewConnector(pgtest.DSN(t))
	require.NoError(t, err)
	counter := &deadlineCounter{}
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
	counter.n.Store(0)
	for i := 0; i < 200; i++ {
		var v int
		require.NoError(t, db.QueryRow("SELECT g FROM generate_series(1, 3) g").Scan(&v))
		require.NoError(t, db.QueryRowContext(context.Background(), "SELECT 1").Scan(&v))
	}
	assert.Zero(t, counter.n.Load(), "QueryRow set read deadlines")
	assert.Equal(t, first, pidOf(t, db), "QueryRow kept the connection")

	rows, err := db.Query(bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Positive(t, counter.n.Load(), "a drain that waits on the network arms its deadline")
}

// TestDrainPastDeadlineKeepsSmallRemainder: a client that reaches its
// drain after the drain timeout (descheduled under load; here a timeout
// of 1 ns) still drains a small remainder that the server has already
// sent, and keeps the connection; a large remainder is cut.
func TestDrainPastDeadlineKeepsSmallRemainder(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_drain_timeout=1ns")
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

// fakeNetConn is a net.Conn whose reads time out at once and whose
// deadlines can fail.
type fakeNetConn struct {
	net.Conn
	failDeadline bool
	deadlines    int
	reads        [][]byte
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (f *fakeNetConn) Read(p []byte) (int, error) {
	if len(f.reads) == 0 {
		return 0, timeoutError{}
	}
	n := copy(p, f.reads[0])
	f.reads = f.reads[1:]
	return n, nil
}

func (f *fakeNetConn) SetReadDeadline(time.Time) error {
	f.deadlines++
	if f.failDeadline {
		return net.ErrClosed
	}
	return nil
}

func TestSockDrainRead(t *testing.T) {
	t.Run("outside a drain no deadline", func(t *testing.T) {
		f := &fakeNetConn{reads: [][]byte{[]byte("abc")}}
		s := &sock{Conn: f}
		n, err := s.Read(make([]byte, 8))
		require.NoError(t, err)
		assert.Equal(t, 3, n)
		assert.Zero(t, f.deadlines)
		assert.True(t, s.endDrain(), "nothing to clear")
		assert.Zero(t, f.deadlines)
	})
	t.Run("past the deadline a small remainder is read", func(t *testing.T) {
		f := &graceConn{}
		s := &sock{Conn: f}
		s.beginDrain(time.Now().Add(-time.Millisecond))
		n, err := s.Read(make([]byte, 8))
		require.NoError(t, err)
		assert.Equal(t, 4, n)
		assert.Equal(t, 2, f.deadlines, "armed, then the grace")
		assert.True(t, s.endDrain())
		assert.Equal(t, 3, f.deadlines, "cleared")
	})
	t.Run("past the deadline a large remainder is not", func(t *testing.T) {
		f := &graceConn{}
		s := &sock{Conn: f}
		s.beginDrain(time.Now().Add(-time.Millisecond))
		s.drained = drainGraceBytes
		_, err := s.Read(make([]byte, 8))
		assert.True(t, isTimeout(err))
		assert.Equal(t, 1, f.deadlines, "no grace")
	})
	t.Run("long past the deadline no grace", func(t *testing.T) {
		f := &graceConn{}
		s := &sock{Conn: f}
		s.beginDrain(time.Now().Add(-2 * drainGraceMax))
		_, err := s.Read(make([]byte, 8))
		assert.True(t, isTimeout(err))
	})
	t.Run("a deadline that cannot be set fails the read", func(t *testing.T) {
		f := &fakeNetConn{failDeadline: true, reads: [][]byte{[]byte("abc")}}
		s := &sock{Conn: f}
		s.beginDrain(time.Now().Add(time.Second))
		_, err := s.Read(make([]byte, 8))
		assert.ErrorIs(t, err, net.ErrClosed)
		assert.False(t, s.endDrain(), "a deadline that cannot be cleared is reported")
	})
}

// graceConn times out its first read and has data for the next.
type graceConn struct {
	net.Conn
	deadlines, reads int
}

func (g *graceConn) SetReadDeadline(time.Time) error { g.deadlines++; return nil }

func (g *graceConn) Read(p []byte) (int, error) {
	g.reads++
	if g.reads == 1 {
		return 0, timeoutError{}
	}
	return copy(p, "data"), nil
}
