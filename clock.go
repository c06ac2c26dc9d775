package jsonstream

import "time"

// epoch anchors the instants of clock.
var epoch = time.Now()

// An instant is a reading of the monotonic clock (clock): nanoseconds
// since epoch, which is never an instant read. It is for the instants a
// query only measures from (its start, a connection's return to the
// pool): a small query takes a few of these, and where time.Now reads the
// wall clock too and a time.Time's arithmetic takes its two encodings
// apart, an instant is one clock read and a subtraction.
type instant int64

// clock reads the monotonic clock.
func clock() instant { return instant(max(time.Since(epoch), 1)) }

// elapsed is the time from i to now.
func (i instant) elapsed() time.Duration { return time.Duration(clock() - i) }
