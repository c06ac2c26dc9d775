//go:build unix

package jsonstream

import (
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
	sc, ok := s.Conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	n := 0
	_ = raw.Read(func(fd uintptr) bool {
		n, _, err = syscall.Recvfrom(int(fd), s.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: EAGAIN means nothing was sent
	})
	if err != nil || n <= 0 {
		return nil
	}
	return lastFatal(s.peekBuf[:n])
}
