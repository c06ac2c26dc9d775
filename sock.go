package jsonstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lib/pq"
)

// A drain reads off the rest of a result so that the connection can serve
// another query: CloseAuto's drain of a single-statement stream, and a
// cursor-backed stream's batch in flight. Its deadline is armed only when
// the drain has to wait on the network: when the rest is already in
// lib/pq's buffer (QueryRow's CommandComplete and ReadyForQuery usually
// are), a drain sets no deadline and starts no timer.
//
// Past the deadline a drain is not cut while the remainder is small and
// keeps coming: a client descheduled under load finds its deadline gone
// with the data already in the kernel's buffer, or a server descheduled
// sends its last batch a little late, and cutting then would cost a
// connection for nothing. A large remainder, or a server that stops
// sending for drainGrace, is cut as before.
const (
	// drainGraceBytes is how much a drain may read past its deadline.
	drainGraceBytes = 256 << 10
	// drainGrace is how long each read past the deadline may wait for data.
	drainGrace = 5 * time.Millisecond
	// drainGraceMax bounds how long past its deadline a drain may go on.
	drainGraceMax = 100 * time.Millisecond
)

// sock is the network connection jsonstream's dialer made for one
// connection. lib/pq reads and writes through it; jsonstream closes it to
// cut the connection and arms drain deadlines on it.
type sock struct {
	// Conn is what lib/pq reads and writes: the TLS connection that
	// jsonstream's dialer established (tls.go), or raw.
	net.Conn
	// raw is the TCP or Unix socket beneath: a cut closes it, without the
	// TLS close_notify that a full send buffer would hold up, and peeks
	// look at it.
	raw net.Conn
	// until is the drain's deadline in Unix nanoseconds while a drain is
	// on, 0 otherwise. Set by the goroutine that drains, or by a failure
	// (Cancel, pause timeout, context) from any goroutine.
	until atomic.Int64
	// armed is set once the deadline is on the socket, so that the end of
	// the drain knows to clear it.
	armed atomic.Bool
	// drained counts the bytes read during the drain, and armFailed is
	// set when the drain's deadline could not be set: the drain then
	// failed mid-result and the connection must be cut. Only the reading
	// goroutine touches them.
	drained   int
	armFailed bool
	// last is what the last read that returned bytes put into lib/pq's
	// buffer, where it stays once lib/pq stops reading: after a FATAL
	// error, that error (fatal.go). The reading goroutine's.
	last []byte
	// peekBuf is where peekFatal looks at what the server sent while the
	// connection was idle; the reading goroutine's.
	peekBuf [512]byte
	// peekRaw and peekFn are made by the first peek (peek_unix.go), and
	// peekN and peekErr are what peekFn found; the reading goroutine's.
	peekRaw syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekN   int
	peekErr error
	// frames follows the backend's messages (frame.go); decided is set by
	// lib/pq's first write, which turns it on or leaves it off.
	frames  framer
	decided bool
	// held is what a read brought past a ReadyForQuery, handed to lib/pq
	// by the next reads; heldErr is the error that read returned with it.
	// Its first heldScanned bytes went past the framer already: what a
	// portal stream read for lib/pq (giveBack).
	held        []byte
	heldOff     int
	heldScanned int
	heldErr     error
	// owed is the portal stream whose end was sent and not yet read
	// (owed.go); owedWrites is the framer's write count after it was sent.
	// The reading goroutine's.
	owed       *portal
	owedWrites uint64
	// syncPending is set while an owed end without Sync waits for its
	// timer (syncTimer) to send the Sync; syncMu is held while the timer
	// does, or while a claim stops it (owed.go). replay is what was
	// written after such an end, sent again if the end failed.
	syncPending atomic.Bool
	syncMu      sync.Mutex
	syncTimer   *time.Timer
	replay      []byte
	// naming is set while lib/pq prepares a statement, and prepared is
	// the name its Parse gave the statement (stmtName): a portal stream
	// of the statement binds it by that name.
	naming   bool
	prepared string
}

// Write implements net.Conn. lib/pq's first write tells whether the
// connection carries protocol messages from here on (a StartupMessage),
// and every write ends the idle time that a ReadyForQuery began.
func (s *sock) Write(p []byte) (int, error) {
	s.claim()
	if s.naming {
		s.naming = false
		s.prepared = stmtName(p)
	}
	return s.write(p)
}

// write is Write once the connection is claimed: jsonstream's own
// messages go here.
func (s *sock) write(p []byte) (int, error) {
	if !s.decided {
		s.decided = true
		s.frames.on = isStartup(p)
	}
	s.frames.wrote()
	if o := s.owed; o != nil && o.unsynced {
		s.replay = append(s.replay, p...)
	}
	return s.Conn.Write(p)
}

// Read implements net.Conn: lib/pq's reads. An owed end is read first
// (owed.go); then it is read.
func (s *sock) Read(p []byte) (int, error) {
	s.claim()
	if s.owed != nil {
		if err := s.payOwed(); err != nil {
			return 0, err
		}
	}
	return s.read(p)
}

// read is the socket's own Read outside a drain. A read never goes past
// a ReadyForQuery: what came after it is kept for the next read.
func (s *sock) read(p []byte) (n int, err error) {
	if s.heldOff < len(s.held) {
		return s.readHeld(p)
	}
	if s.until.Load() == 0 {
		n, err = s.Conn.Read(p)
	} else {
		n, err = s.drainRead(p)
	}
	if n > 0 {
		s.last = p[:n]
		if k := s.frames.scan(p[:n]); k < n {
			s.held = append(s.held[:0], p[k:n]...)
			s.heldOff, s.heldErr = 0, err
			n, err = k, nil
			s.last = p[:n]
		}
	}
	return n, err
}

// readHeld hands lib/pq what an earlier read brought past a
// ReadyForQuery, up to the next ReadyForQuery in it.
func (s *sock) readHeld(p []byte) (int, error) {
	var n int
	if s.heldOff < s.heldScanned {
		// Scanned already: they end at a message boundary or inside the
		// message that the socket's next bytes go on with, never past a
		// ReadyForQuery.
		n = copy(p, s.held[s.heldOff:s.heldScanned])
	} else {
		n = copy(p, s.held[s.heldOff:])
		n = s.frames.scan(p[:n])
	}
	s.heldOff += n
	s.last = p[:n]
	if s.heldOff < len(s.held) {
		return n, nil
	}
	s.held, s.heldOff, s.heldScanned = s.held[:0], 0, 0
	err := s.heldErr
	s.heldErr = nil
	return n, err
}

func (s *sock) drainRead(p []byte) (int, error) {
	until := s.until.Load()
	if !s.armed.Load() {
		s.armed.Store(true)
		if err := s.SetReadDeadline(time.Unix(0, until)); err != nil {
			s.armFailed = true
			return 0, err
		}
	}
	n, err := s.Conn.Read(p)
	if n == 0 && err != nil && isTimeout(err) && s.drained < drainGraceBytes &&
		time.Since(time.Unix(0, until)) < drainGraceMax {
		if e := s.SetReadDeadline(time.Now().Add(drainGrace)); e != nil {
			return 0, e
		}
		n, err = s.Conn.Read(p)
	}
	s.drained += n
	return n, err
}

// beginDrain starts a drain that ends at deadline, or one without a bound
// when deadline is zero, in place of any earlier bound (a failure's). It
// reports false when an earlier deadline could not be cleared.
func (s *sock) beginDrain(deadline time.Time) bool {
	s.drained, s.armFailed = 0, false
	ok := true
	if s.armed.Swap(false) {
		ok = s.SetReadDeadline(time.Time{}) == nil
	}
	if deadline.IsZero() {
		s.until.Store(0)
	} else {
		s.until.Store(deadline.UnixNano())
	}
	return ok
}

// interrupt bounds, from any goroutine, the read that a failing stream's
// reader may be blocked in: it gets d to finish what it reads, then fails
// with a timeout.
func (s *sock) interrupt(d time.Duration) {
	deadline := time.Now().Add(d)
	s.until.Store(deadline.UnixNano())
	s.armed.Store(true)
	_ = s.SetReadDeadline(deadline) // a failure shows in the read
}

// endDrain ends the drain and clears its deadline if one was armed. It
// reports false when the deadline could not be set, which left a result
// half read, or cleared, which would time out the next query: the caller
// cuts the connection.
func (s *sock) endDrain() bool {
	s.until.Store(0)
	ok := !s.armFailed
	s.armFailed = false
	if s.armed.Swap(false) && s.SetReadDeadline(time.Time{}) != nil {
		ok = false
	}
	return ok
}

// socketKey is the context key under which Connect passes a socketSlot to
// the dialer.
type socketKey struct{}

// socketSlot receives the network connection the dialer made for one
// Connect. When lib/pq tries several hosts the last dial wins, which is
// the one it keeps.
type socketSlot struct{ conn atomic.Pointer[sock] }

// NewDialer returns a pq.Dialer that dials with base (a net.Dialer when
// base is nil) and lets the jsonstream Connector that asked for the
// connection cut it: that is how Close stops a stream early and how
// Cancel, the pause timeout and context cancellation stop the server-side
// query. Install it with (*pq.Connector).Dialer.
func NewDialer(base pq.Dialer) pq.Dialer {
	if base == nil {
		base = netDialer{}
	}
	return dialer{base: base}
}

type dialer struct {
	base pq.Dialer
	// tls is the TLS plan of the connector that installed the dialer
	// (tls.go); nil for NewDialer.
	tls *tlsPlan
}

// Dial implements pq.Dialer.
func (d dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialTimeout implements pq.Dialer.
func (d dialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

// DialContext implements pq.DialerContext; lib/pq prefers it and passes
// Connect's context, which carries the slot. A dialer with a TLS plan
// negotiates on every connection it makes, lib/pq's cancel requests
// included, whose context carries no slot.
func (d dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := d.dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	raw := c
	if d.tls != nil {
		redial := func() (net.Conn, error) { return d.dial(ctx, network, address) }
		var encrypted bool
		if c, encrypted, err = d.tls.negotiate(ctx, c, address, redial); err != nil {
			return nil, err
		}
		if tc, ok := c.(*tls.Conn); ok && encrypted {
			raw = tc.NetConn()
		} else {
			raw = c
		}
	}
	slot, ok := ctx.Value(socketKey{}).(*socketSlot)
	if !ok {
		return c, nil
	}
	s := &sock{Conn: c, raw: raw}
	slot.conn.Store(s)
	return s, nil
}

// dial dials with the base dialer, within ctx.
func (d dialer) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if dc, ok := d.base.(pq.DialerContext); ok {
		return dc.DialContext(ctx, network, address)
	}
	if deadline, ok := ctx.Deadline(); ok {
		return d.base.DialTimeout(network, address, time.Until(deadline))
	}
	return d.base.Dial(network, address)
}

// cut closes the socket beneath any TLS at once.
func (s *sock) cut() error { return s.under().Close() }

// encrypted reports whether jsonstream's dialer established TLS on the
// socket: its pending bytes are then ciphertext.
func (s *sock) encrypted() bool { return s.raw != nil && s.raw != s.Conn }

// pull reads, through TLS, what the server sent while the connection was
// idle, and holds it for lib/pq's next read (readHeld), so that a FATAL
// among it can be seen. It waits at most drainGrace for each piece;
// called only on an idle connection, by the goroutine that owns it.
func (s *sock) pull() {
	if s.SetReadDeadline(time.Now().Add(drainGrace)) != nil {
		return
	}
	for {
		n, err := s.Conn.Read(s.peekBuf[:])
		s.held = append(s.held, s.peekBuf[:n]...)
		if err != nil {
			if !isTimeout(err) {
				s.heldErr = err
			}
			break
		}
	}
	_ = s.SetReadDeadline(time.Time{}) // a failure shows in the next read
}

// under is the TCP or Unix socket beneath any TLS.
func (s *sock) under() net.Conn {
	if s.raw != nil {
		return s.raw
	}
	return s.Conn
}

// netDialer is the base of NewDialer(nil): plain net.Dialer dialing.
type netDialer struct{ d net.Dialer }

// Dial implements pq.Dialer.
func (n netDialer) Dial(network, address string) (net.Conn, error) {
	return n.d.Dial(network, address)
}

// DialTimeout implements pq.Dialer.
func (n netDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout(network, address, timeout)
}

// DialContext implements pq.DialerContext.
func (n netDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return n.d.DialContext(ctx, network, address)
}

// clearDeadline ends any bound on the socket (a drain's, a failure's)
// before the connection serves anything more; when that fails, it cuts
// the connection and reports false.
func (c *conn) clearDeadline() bool {
	if c.sock == nil || c.sock.endDrain() {
		return true
	}
	c.cut()
	return false
}

// The column type methods forward to the first batch's rows, which
// describe the cursor's columns as the query's own rows would.

// isTimeout reports whether err is a network timeout: the drain timeout.
// A function of its own so the never-failing path does not allocate.
func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}
