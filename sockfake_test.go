package jsonstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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

	// delay holds each read of a real connection back by its nanoseconds:
	// a slow link's round trip.
	delay atomic.Int64
	// recording, once set, keeps what is written in written.
	recording atomic.Bool
	// beforeWrite, when set, runs before each write with what is written.
	beforeWrite atomic.Pointer[func([]byte)]
	// injected is what the next reads return before the real connection's
	// bytes: a reply the server did not send.
	injected []byte
	// shape, when set, runs on each read of a real connection with the
	// buffer and the byte count read, and returns the count to hand out:
	// it may read more into p, or hold the rest back (holdBack).
	shape atomic.Pointer[func(p []byte, n int) int]

	reads     atomic.Int64 // Read calls
	deadlines atomic.Int64 // SetReadDeadline calls
	faults    atomic.Int64 // SetReadDeadline calls that onDeadline failed
	stalled   atomic.Bool  // writes are swallowed from now on
	// failWrites, when set, fails the writes from now on; reads go on.
	failWrites atomic.Pointer[error]
	// failRead, when set, fails the next read, once.
	failRead  atomic.Pointer[error]
	swallowed chan struct{} // closed by the first write swallowed

	mu         sync.Mutex // guards the four below
	deadline   time.Time  // the read deadline in effect
	onDeadline func(time.Time) error
	cleared    chan<- struct{}
	written    []byte

	closed        chan struct{}
	closeOnce     sync.Once
	swallowedOnce sync.Once
}

// newFakeSock returns a socket without a real connection; set Conn
// before its first use to make it one over a real connection.
func newFakeSock() *fakeSock {
	return &fakeSock{closed: make(chan struct{}), swallowed: make(chan struct{})}
}

// replying is a socket without a real connection whose reads return the
// server's bytes data in the chunk sizes given (cycling through them; at
// least 1 byte each; all at once without any), then io.EOF.
func replying(data []byte, chunks ...int) *fakeSock {
	s := newFakeSock()
	next := 0
	s.onRead = func(p []byte) (int, error) {
		if len(data) == 0 {
			return 0, io.EOF
		}
		n := len(data)
		if len(chunks) > 0 {
			n = max(1, chunks[next%len(chunks)])
			next++
		}
		n = copy(p, data[:min(n, len(data))])
		data = data[n:]
		return n, nil
	}
	return s
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

// executes returns the row limits of the Execute messages written since
// recording was set, which must have been between two messages.
func (s *fakeSock) executes() []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var limits []int32
	for b := s.written; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:5]))
		if b[0] == 'E' {
			body := b[5:n]
			name := bytes.IndexByte(body, 0)
			limits = append(limits, int32(binary.BigEndian.Uint32(body[name+1:])))
		}
		b = b[n:]
	}
	return limits
}

// holdBack keeps b for the next reads, before anything else they return.
func (s *fakeSock) holdBack(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injected = append(bytes.Clone(b), s.injected...)
}

// stall makes the socket swallow every write from now on.
func (s *fakeSock) stall() { s.stalled.Store(true) }

func (s *fakeSock) Read(p []byte) (int, error) {
	s.reads.Add(1)
	if err := s.failRead.Swap(nil); err != nil {
		return 0, *err
	}
	s.mu.Lock()
	if len(s.injected) > 0 {
		n := copy(p, s.injected)
		s.injected = s.injected[n:]
		s.mu.Unlock()
		return n, nil
	}
	s.mu.Unlock()
	switch {
	case s.Conn != nil:
		if d := s.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		n, err := s.Conn.Read(p)
		if f := s.shape.Load(); f != nil && n > 0 && err == nil {
			n = (*f)(p, n)
		}
		return n, err
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
	if f := s.beforeWrite.Load(); f != nil {
		(*f)(b)
	}
	if s.recording.Load() {
		s.mu.Lock()
		s.written = append(s.written, b...)
		s.mu.Unlock()
	}
	if err := s.failWrites.Load(); err != nil {
		return 0, *err
	}
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

// inject makes the next reads return b before the real connection's bytes.
func (s *fakeSock) inject(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injected = append(s.injected, b...)
}

// SyscallConn gives the real connection's descriptor, so that a peek
// looks at it as at a socket of the net package's; a socket without one
// cannot be looked at.
func (s *fakeSock) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := s.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("fakeSock: no descriptor")
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
	// delay is each new connection's fakeSock.delay.
	delay time.Duration
	// refusing is refuse for a test that changes it while dials go on
	// (setRefuse); attempts counts the dials asked for.
	refusing atomic.Pointer[error]
	attempts atomic.Int64

	mu    sync.Mutex // guards socks
	socks []*fakeSock
}

func (d *fakeDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialTimeout(network, address, 0)
}

func (d *fakeDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	d.attempts.Add(1)
	if p := d.refusing.Load(); p != nil {
		return nil, *p
	}
	if d.refuse != nil {
		return nil, d.refuse
	}
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	s := newFakeSock()
	s.Conn = c
	s.delay.Store(int64(d.delay))
	d.mu.Lock()
	d.socks = append(d.socks, s)
	d.mu.Unlock()
	return s, nil
}

// setRefuse makes the dials from now on fail with err; nil lets them
// through again.
func (d *fakeDialer) setRefuse(err error) {
	if err == nil {
		d.refusing.Store(nil)
		return
	}
	d.refusing.Store(&err)
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
