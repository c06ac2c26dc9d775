package jsonstream

import (
	"strconv"
	"sync/atomic"
)

// State is the state of one result stream. A stream starts Running when
// its query returns its rows; a Stream whose query has not started (or
// never got its rows: it failed before them) is NotStarted. Complete,
// Failed and Closed are final.
//
//	from        to        by
//	NotStarted  Running   the Stream's query returns its rows
//	Running     Paused    Pause
//	Paused      Running   Resume; pause timeout under ResumeOnPauseTimeout
//	Running     Complete  Next reaches the end of the last result set; Close
//	                      finds that the whole result was received
//	Paused      Complete  an in-flight Next reaches the end while Pause is called
//	Running     Failed    Next returns an error; the query context ends; Cancel
//	Paused      Failed    the pause timeout expires; the query context ends; Cancel
//	Running     Closed    Close before the end
//	Paused      Closed    Close before the end
//
// Close on a Complete or Failed stream keeps that state. A result is
// received whole when nothing of it is left unread but the server's end
// of it: QueryRow's one-row result is Complete, not Closed, though
// database/sql closes it without reading to its end. Pause, Resume and
// Cancel on a NotStarted Stream return ErrNotStarted.
type State uint32

const (
	// Running means rows flow: Next reads from the server.
	Running State = iota
	// Paused means Next delivers no row and nothing is read from the server
	// until Resume.
	Paused
	// Complete means every row of every result set was read.
	Complete
	// Failed means an error ended the stream: a server or network error, the
	// query's context, Cancel or the pause timeout.
	Failed
	// Closed means the stream was closed before its end.
	Closed
	// NotStarted is the State of a Stream whose query has not returned
	// its rows. A stream's rows are never NotStarted.
	NotStarted
)

// String returns the state's name, as in "running".
func (s State) String() string {
	switch s {
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Complete:
		return "complete"
	case Failed:
		return "failed"
	case Closed:
		return "closed"
	case NotStarted:
		return "not_started"
	}
	return "State(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// final reports whether no transition leaves s.
func (s State) final() bool { return s == Complete || s == Failed || s == Closed }

// stateCell holds a stream's State. It is a plain atomic so a stream that
// never pauses pays nothing beyond its four bytes; every change is a
// compare-and-swap, so two goroutines cannot both leave the same state.
type stateCell struct{ v atomic.Uint32 }

func (c *stateCell) load() State { return State(c.v.Load()) }

func (c *stateCell) cas(from, to State) bool {
	return c.v.CompareAndSwap(uint32(from), uint32(to))
}

// finish moves a live stream (Running or Paused) to the final state to and
// reports the state it left. A stream already final keeps its state and
// finish reports false.
func (c *stateCell) finish(to State) (State, bool) {
	for {
		from := c.load()
		if from.final() {
			return from, false
		}
		if c.cas(from, to) {
			return from, true
		}
	}
}
