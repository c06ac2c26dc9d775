package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeSock stands for the network connection that jsonstream's dialer
// would have made, so that the fake driver's conns can be cut: closing it
// is the cut.
type fakeSock struct {
	closed    chan struct{}
	closeOnce sync.Once
	// onClose runs on the first Close, before closed is closed.
	onClose func()
}

func newFakeSock() *fakeSock { return &fakeSock{closed: make(chan struct{})} }

// netConn is s wrapped as jsonstream's dialer wraps a socket, as newConn
// and the socket slot take it.
func (s *fakeSock) netConn() *sock {
	return &sock{Conn: s}
}

func (s *fakeSock) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func (s *fakeSock) Read([]byte) (int, error) {
	<-s.closed
	return 0, net.ErrClosed
}

func (s *fakeSock) Write(b []byte) (int, error) {
	if s.isClosed() {
		return 0, net.ErrClosed
	}
	return len(b), nil
}

func (s *fakeSock) Close() error {
	s.closeOnce.Do(func() {
		if s.onClose != nil {
			s.onClose()
		}
		close(s.closed)
	})
	return nil
}

func (s *fakeSock) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (s *fakeSock) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (s *fakeSock) SetDeadline(time.Time) error      { return nil }
func (s *fakeSock) SetReadDeadline(time.Time) error  { return nil }
func (s *fakeSock) SetWriteDeadline(time.Time) error { return nil }

// errCutRead is what a fake read on a cut connection returns.
var errCutRead = errors.New("fake: read on a cut connection")

// sockRows are inner rows on a fakeSock: Next takes one row per value
// sent on feed (io.EOF once feed is closed) and fails with errCutRead when
// the socket is cut, or when fail is closed. With buffered set, a cut
// does not end a Next: the row it waits for is already in the client's
// buffer, as lib/pq's bufio may hold it.
type sockRows struct {
	sock     *fakeSock
	feed     chan string
	fail     chan struct{}
	buffered bool
	next     atomic.Int64 // inner Next calls
}

func newSockRows(sock *fakeSock) *sockRows {
	return &sockRows{sock: sock, feed: make(chan string), fail: make(chan struct{})}
}

func (r *sockRows) Columns() []string { return []string{"data"} }
func (r *sockRows) Close() error      { return nil }

func (r *sockRows) Next(dest []driver.Value) error {
	r.next.Add(1)
	cut := r.sock.closed
	if r.buffered {
		cut = nil
	}
	select {
	case v, ok := <-r.feed:
		if !ok {
			return io.EOF
		}
		dest[0] = v
		return nil
	case <-cut:
		return errCutRead
	case <-r.fail:
		return errCutRead
	}
}

// inFlight waits until the inner Next has been called n times.
func (r *sockRows) inFlight(t testing.TB, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return r.next.Load() >= n }, 5*time.Second, time.Millisecond,
		"the inner Next was not called")
}

// sockScriptConn is an inner conn whose queries return the rows its
// connector makes for it.
type sockScriptConn struct {
	sock      *fakeSock
	connector *sockScriptConnector
	closed    atomic.Bool
}

func (c *sockScriptConn) Prepare(string) (driver.Stmt, error) {
	return nil, errors.New("fake: no Prepare")
}
func (c *sockScriptConn) Close() error              { c.closed.Store(true); return nil }
func (c *sockScriptConn) Begin() (driver.Tx, error) { return fakeTx{}, nil }

func (c *sockScriptConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return c.connector.newRows(c.sock), nil
}

// sockScriptConnector opens scriptConns, each with a fakeSock that it puts in
// the socket slot as jsonstream's dialer does, so the conns can be cut.
type sockScriptConnector struct {
	newRows func(*fakeSock) driver.Rows
	// undialed leaves the socket slot empty: the conns are then ones that
	// jsonstream did not dial and cannot cut.
	undialed bool

	mu    sync.Mutex // guards conns
	conns []*sockScriptConn
}

func (c *sockScriptConnector) Connect(ctx context.Context) (driver.Conn, error) {
	sock := newFakeSock()
	if slot, ok := ctx.Value(socketKey{}).(*socketSlot); ok && !c.undialed {
		slot.conn.Store(sock.netConn())
	}
	sc := &sockScriptConn{sock: sock, connector: c}
	c.mu.Lock()
	c.conns = append(c.conns, sc)
	c.mu.Unlock()
	return sc, nil
}

func (c *sockScriptConnector) Driver() driver.Driver { return &fakeDriver{} }

// opened returns the conns opened so far.
func (c *sockScriptConnector) opened() []*sockScriptConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*sockScriptConn(nil), c.conns...)
}

// openSockScript returns a DB whose conns can be cut, with one connection at
// most, and whose queries return what newRows makes.
func openSockScript(t testing.TB, newRows func(*fakeSock) driver.Rows, opts ...Option) (*sql.DB, *sockScriptConnector) {
	t.Helper()
	sc := &sockScriptConnector{newRows: newRows}
	c, err := NewConnector(sc, opts...)
	require.NoError(t, err)
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db, sc
}

// driverStream runs one query at the driver level, with no database/sql
// in between, on a jsonstream conn over inner whose socket is sock (nil:
// a conn jsonstream did not dial). It returns the stream.
func driverStream(t testing.TB, ctx context.Context, inner driver.Rows, fs *fakeSock, opts ...Option) *rows {
	t.Helper()
	s := defaultSettings()
	require.NoError(t, s.apply(opts))
	var nc *sock
	if fs != nil {
		nc = fs.netConn()
	}
	c := newConn(&sockScriptConn{sock: fs, connector: &sockScriptConnector{
		newRows: func(*fakeSock) driver.Rows { return inner },
	}}, &s, nc)
	dr, err := c.QueryContext(ctx, "SELECT q", nil) // a read: a write is never cut
	require.NoError(t, err)
	r := dr.(*rows)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// driverNext is what one driver-level Next gave.
type driverNext struct {
	val driver.Value
	err error
}

// driverNextAsync calls the driver-level Next in a goroutine.
func driverNextAsync(r driver.Rows) <-chan driverNext {
	ch := make(chan driverNext, 1)
	go func() {
		dest := make([]driver.Value, 1)
		err := r.Next(dest)
		ch <- driverNext{dest[0], err}
	}()
	return ch
}

func requireDriverNext(t *testing.T, ch <-chan driverNext, d time.Duration) driverNext {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the driver-level Next did not return within %v", d)
		return driverNext{}
	}
}
