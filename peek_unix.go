//go:build unix

package jsonstream

import (
	"errors"
	"net"
	"syscall"

	"github.com/lib/pq"
)

// peekFatal looks, without reading it, at what the server sent while the
// connection was idle, and returns the FATAL error with which the server
// ended the session, if that is what it sent. It is asked before a
// cursor-backed stream sends its next FETCH: once the request is written
// to a connection that the server closed, the reset that answers it may
// drop the FATAL before lib/pq reads it. Only a plaintext TCP or Unix
// socket can be looked at; otherwise it returns nil.
func (s *sock) peekFatal() *pq.Error {
	if pe := s.heldFatal(); pe != nil {
		return pe
	}
	n, ok := s.peek()
	if !ok || n <= 0 {
		return nil
	}
	if s.encrypted() {
		s.pull()
		return s.heldFatal()
	}
	return lastFatal(s.peekBuf[:n])
}

// endedWhileIdle reports whether the server ended the session while the
// connection was idle: it sent a FATAL error, or closed the connection.
// database/sql asks before it hands a pooled connection to a query
// (ResetSession), so that a connection the server ended is replaced before
// anything is sent on it rather than failing the query with a reset.
func (s *sock) endedWhileIdle() bool {
	if s.heldFatal() != nil {
		return true
	}
	n, ok := s.peek()
	switch {
	case !ok:
		return false
	case n == 0:
		return true // the server closed the connection
	case s.encrypted():
		// Through TLS: a FATAL, or the server's close_notify and close.
		s.pull()
		return s.heldFatal() != nil || s.heldErr != nil
	}
	return lastFatal(s.peekBuf[:n]) != nil
}

// peek copies into peekBuf what the server sent and nobody read yet,
// without waiting and without taking it off the socket. It reports the
// byte count (0 once the server closed the connection) and whether the
// socket could be looked at and held anything.
func (s *sock) peek() (int, bool) {
	s.peekErr = nil
	if s.peekRaw == nil {
		sc, ok := s.under().(syscall.Conn)
		if !ok {
			return 0, false
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return 0, false
		}
		// Made once per connection, so that a peek allocates nothing.
		s.peekRaw = raw
		s.peekFn = func(fd uintptr) bool {
			s.peekN, _, s.peekErr = syscall.Recvfrom(int(fd), s.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true // never wait: EAGAIN means nothing was sent
		}
	}
	if err := s.peekRaw.Read(s.peekFn); err != nil || s.peekErr != nil {
		return 0, false
	}
	return s.peekN, true
}

// rawQuiet reports whether the socket holds nothing the server sent: a
// look that does not wait found nothing there.
func (s *sock) rawQuiet() bool {
	if _, ok := s.peek(); ok {
		return false
	}
	return s.peekRaw != nil && errors.Is(s.peekErr, syscall.EAGAIN)
}

// unixBuffer returns the receive buffer's size (SO_RCVBUF) of a Unix
// socket, or 0 for any other: what a Unix socket holds of what the server
// sent, which no autotuning grows (TCP's grows with the traffic, and the
// server's send buffer adds to it).
func (s *sock) unixBuffer() int {
	if _, ok := s.under().(*net.UnixConn); !ok {
		return 0
	}
	if s.peekRaw == nil {
		if s.peek(); s.peekRaw == nil {
			return 0
		}
	}
	n := 0
	_ = s.peekRaw.Control(func(fd uintptr) {
		n, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	return n
}
