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

// The clock is read once per use of a connection from the pool, not at
// each of its steps: a read costs about 45 ns on a small virtual machine,
// and four of them were a sixth of what the driver's own work costs a
// small query. ResetSession reads it as
// database/sql takes the conn (take); the query that follows, if that is
// the next call, takes the reading as its start (queryStart), and any
// later query reads its own. IsValid, as database/sql puts the conn back,
// reads nothing: the conn's last reading (usedAt) stands for the moment.
// It is earlier than that moment, never later, so the rest it measures is
// longer than the true one: a conn whose last query was long is looked at
// when taken back at once, never the other way round.

// take notes that database/sql took the conn from its pool now (a call to
// ResetSession), and returns the clock's reading.
func (c *conn) take() instant {
	t := clock()
	c.usedAt, c.taken = t, true
	return t
}

// restedInPool reports whether the conn sat in the pool long enough, from
// when database/sql last put it back (IsValid) to now, for ResetSession to
// look at its socket. A conn put back before any reading was taken is
// looked at.
func (c *conn) restedInPool(now instant) bool {
	return c.pooledAt == 0 || time.Duration(now-c.pooledAt) >= peekAfterIdle
}

// queryStart returns the start of a query: the instant database/sql took
// the conn, when this is the first call since, or a new reading.
func (c *conn) queryStart() instant {
	if c.taken {
		c.taken = false
		return c.usedAt
	}
	c.usedAt = clock()
	return c.usedAt
}

// leave ends a call to the conn: a later call on the same use of the conn
// did not start when the conn was taken. It also starts again the Sync
// timer of an owed end that the call stopped and left unused (rearm).
func (c *conn) leave() {
	c.taken = false
	c.sock.rearm()
}
