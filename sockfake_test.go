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

// fakeSock is the tests' one network connection. Over a real connection
// (Conn set, as fakeDialer dials them) it passes reads and writes on;
// without one it plays the server's side: each read gets a byte of reply
// at once (or what onRead gives), fails with a timeout once its read
// deadline has passed, and with net.ErrClosed once the socket is closed.
//
// Either way it counts its read deadlines and can fail or hold them
// (setOnDeadline) or report those cleared (notifyCleared), swallows
// writes once stalled (a network that stopped passing the client's
// writes on), and records its Close: closing it is the cut.
type fakeSock struct {
	net.Conn // the real connection, or nil

	// onRead, when set on a socket without Conn, plays each read.
	onRead func(p []byte) (int, error)
	// onClose runs on the first Close, before closed is closed.
	onClose func()

	deadlines atomic.Int64  // SetReadDeadline calls
	faults    atomic.Int64  // SetReadDeadline calls that onDeadline failed
	stalled   atomic.Bool   // writes are swallowed from now on
	swallowed chan struct{} // closed by the first write swallowed

	mu         sync.Mutex // guards the three below
	deadline   time.Time  // the read deadline in effect
	onDeadline func(time.Time) error
	cleared    chan<- struct{}

	closed        chan struct{}
	closeOnce     sync.Once
	swallowedOnce sync.Once
}

// newFakeSock returns a socket without a real connection; set Conn
// before its first use to make it one over a real connection.
func newFakeSock() *fakeSock {
	return &fakeSock{closed: make(chan struct{}), swallowed: make(chan struct{})}
}

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

// setOnDeadline makes f run, from now on, in each SetReadDeadline before
// the deadline takes effect: it may hold the call, or fail it with an
// error (the deadline then does not change). nil ends it.
func (s *fakeSock) setOnDeadline(f func(time.Time) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onDeadline = f
}

// notifyCleared signals on ch, without waiting, each time from now on a
// zero read deadline takes effect.
func (s *fakeSock) notifyCleared(ch chan<- struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleared = ch
}

// readDeadline returns the read deadline in effect.
func (s *fakeSock) readDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

// stall makes the socket swallow every write from now on.
func (s *fakeSock) stall() { s.stalled.Store(true) }

func (s *fakeSock) Read(p []byte) (int, error) {
	switch {
	case s.Conn != nil:
		return s.Conn.Read(p)
	case s.onRead != nil:
		return s.onRead(p)
	case s.isClosed():
		return 0, net.ErrClosed
	}
	if d := s.readDeadline(); !d.IsZero() && !time.Now().Before(d) {
		return 0, timeoutError{}
	}
	return copy(p, "x"), nil
}

func (s *fakeSock) Write(b []byte) (int, error) {
	if s.stalled.Load() {
		s.swallowedOnce.Do(func() { close(s.swallowed) })
		return len(b), nil
	}
	if s.Conn != nil {
		return s.Conn.Write(b)
	}
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
	if s.Conn != nil {
		return s.Conn.Close()
	}
	return nil
}

func (s *fakeSock) SetReadDeadline(t time.Time) error {
	s.deadlines.Add(1)
	s.mu.Lock()
	hook := s.onDeadline
	s.mu.Unlock()
	if hook != nil {
		if err := hook(t); err != nil {
			s.faults.Add(1)
			return err
		}
	}
	if s.Conn != nil {
		if err := s.Conn.SetReadDeadline(t); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.deadline = t
	cleared := s.cleared
	s.mu.Unlock()
	if t.IsZero() && cleared != nil {
		select {
		case cleared <- struct{}{}:
		default:
		}
	}
	return nil
}

// Only read deadlines are played; the others go to the real connection.

func (s *fakeSock) SetDeadline(t time.Time) error {
	if s.Conn != nil {
		return s.Conn.SetDeadline(t)
	}
	return nil
}

func (s *fakeSock) SetWriteDeadline(t time.Time) error {
	if s.Conn != nil {
		return s.Conn.SetWriteDeadline(t)
	}
	return nil
}

func (s *fakeSock) LocalAddr() net.Addr {
	if s.Conn != nil {
		return s.Conn.LocalAddr()
	}
	return &net.TCPAddr{}
}

func (s *fakeSock) RemoteAddr() net.Addr {
	if s.Conn != nil {
		return s.Conn.RemoteAddr()
	}
	return &net.TCPAddr{}
}

// timeoutError is the error of a read past its deadline.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// fakeDialer is the tests' one pq.Dialer: it dials real connections, each
// wrapped in a fakeSock that it keeps, so that a test can count, stall or
// fault them; with refuse set it fails every dial without touching the
// network.
type fakeDialer struct {
	refuse error

	mu    sync.Mutex // guards socks
	socks []*fakeSock
}

func (d *fakeDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialTimeout(network, address, 0)
}

func (d *fakeDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	if d.refuse != nil {
		return nil, d.refuse
	}
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	s := newFakeSock()
	s.Conn = c
	d.mu.Lock()
	d.socks = append(d.socks, s)
	d.mu.Unlock()
	return s, nil
}

// last returns the socket dialed last.
func (d *fakeDialer) last() *fakeSock {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.socks[len(d.socks)-1]
}

// count returns how many connections were dialed.
func (d *fakeDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.socks)
}

// deadlines returns the read deadlines set on all the connections.
func (d *fakeDialer) deadlines() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n int64
	for _, s := range d.socks {
		n += s.deadlines.Load()
	}
	return n
}

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
