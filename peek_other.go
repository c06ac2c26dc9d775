//go:build !unix

package jsonstream

import "github.com/lib/pq"

// peekFatal cannot look at a socket's pending bytes on this system, only
// at what the socket holds past a ReadyForQuery.
func (s *sock) peekFatal() *pq.Error { return s.heldFatal() }

// endedWhileIdle cannot look at a socket's pending bytes on this system,
// only at what the socket holds past a ReadyForQuery.
func (s *sock) endedWhileIdle() bool { return s.heldFatal() != nil }

// rawQuiet cannot look at a socket's pending bytes on this system: the
// socket may hold anything.
func (s *sock) rawQuiet() bool { return false }

// unixBuffer cannot read a socket's receive buffer on this system.
func (s *sock) unixBuffer() int { return 0 }
