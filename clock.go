package jsonstream

import "time"

// epoch anchors now's readings.
var epoch = time.Now()

// now is time.Now for the instants a query only measures from (its
// start, a connection's return to the pool): it reads the monotonic clock
// alone, where time.Now reads the wall clock too, and a small query takes
// a few of these. Its wall reading is epoch's advanced by the monotonic
// clock, so it is for measuring durations (time.Since, Sub), never for
// showing.
func now() time.Time { return epoch.Add(time.Since(epoch)) }
