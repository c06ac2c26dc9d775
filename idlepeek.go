package jsonstream

import "time"

// peekAfterIdle is how long a connection rests in database/sql's pool
// before ResetSession looks at its socket for a session the server ended
// meanwhile (endedWhileIdle). The look is a system call, about 1.6 µs on a
// small virtual machine: a connection taken back sooner, by a pool serving
// queries back to back, skips it, and a session ended in that last
// millisecond is met by the query, as it would be through lib/pq. The look
// never closes the race with a server that ends the session just after it:
// it saves a query from the sessions that ended while nobody used them.
// A variable so that a test can hold it open.
var peekAfterIdle = time.Millisecond

// restedInPool reports whether the conn sat in the pool long enough, since
// database/sql last put it back (IsValid), for ResetSession to look at its
// socket. A conn never put back has not been used by a query: it is looked
// at.
func (c *conn) restedInPool() bool {
	return c.pooledAt.IsZero() || time.Since(c.pooledAt) >= peekAfterIdle
}
