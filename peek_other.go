//go:build !unix

package jsonstream

import "github.com/lib/pq"

// peekFatal cannot look at a socket's pending bytes on this system.
func (s *sock) peekFatal() *pq.Error { return nil }

// endedWhileIdle cannot look at a socket's pending bytes on this system.
func (s *sock) endedWhileIdle() bool { return false }
