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

// ResetSession reads the clock as database/sql takes the conn (take), for
// the look above; each query reads it at its start (queryStart). IsValid,
// as database/sql puts the conn back, reads nothing: the conn's last
// reading (usedAt) stands for the moment. It is earlier than that moment,
// never later, so the rest it measures is longer than the true one: a conn
// whose last query was long is looked at when taken back at once, never
// the other way round. A query never starts at the take's reading: a
// sql.Conn may hold the conn unused for any time before its first call.

// take notes that database/sql took the conn from its pool now (a call to
// ResetSession), and returns the clock's reading.
func (c *conn) take() instant {
	c.usedAt = clock()
	return c.usedAt
}

// restedInPool reports whether the conn sat in the pool long enough, from
// when database/sql last put it back (IsValid) to now, for ResetSession to
// look at its socket. A conn put back before any reading was taken is
// looked at.
func (c *conn) restedInPool(now instant) bool {
	return c.pooledAt == 0 || time.Duration(now-c.pooledAt) >= peekAfterIdle
}

// queryStart returns the start of a query: now.
func (c *conn) queryStart() instant {
	c.usedAt = clock()
	return c.usedAt
}

// leave ends a call to the conn: it starts again the Sync timer of an
// owed end that the call stopped and left unused (rearm).
func (c *conn) leave() {
	c.sock.rearm()
}
