package jsonstream

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Errors a stream reports. They work with errors.Is.
var (
	// ErrPauseTimeout ends a stream that stayed paused longer than its pause
	// timeout under FailOnPauseTimeout.
	ErrPauseTimeout = errors.New("jsonstream: pause timeout expired")
	// ErrCanceled ends a stream whose Controller.Cancel was called.
	ErrCanceled = errors.New("jsonstream: stream canceled")
	// ErrStreamEnded is returned by Pause, Resume and Cancel on a stream that
	// is Complete, Failed or Closed; the call changes nothing.
	ErrStreamEnded = errors.New("jsonstream: stream has ended")
	// ErrNotStarted is returned by a Stream's controller methods before a
	// query has started with the Stream as an argument or in its context.
	ErrNotStarted = errors.New("jsonstream: stream has not started")
	// ErrStreamArgument is wrapped by the errors about a misused Stream
	// argument: passed twice, passed to a statement that returns no rows, or
	// used for a second query; and about a Stream in a context
	// (ContextWithStream) reaching a second query or a query with another
	// Stream argument.
	ErrStreamArgument = errors.New("jsonstream: misused Stream argument")
	// ErrRowsClosed is returned by Next after the rows were closed.
	ErrRowsClosed = errors.New("jsonstream: rows are closed")
)

// Controller controls one result stream. jsonstream's driver.Rows
// implement it, and so does *Stream, the handle that ordinary database/sql
// code passes as a query argument to reach the same rows.
//
// All methods may be called from any goroutine, at any time, also while
// another goroutine is inside Next or Close. None of them blocks on the
// stream: each returns at once.
//
// A Next blocked by a pause holds database/sql's lock on the rows, so
// Tx.Rollback, Tx.Commit and Rows.Close called from another goroutine wait
// until the pause ends: Resume, Cancel, the pause timeout or the end of
// the query's context. (database/sql cancels a context of its own when a
// transaction ends, which no driver sees.) To end a paused stream from
// another goroutine, call Cancel, or cancel the context given to BeginTx
// or to the query: either wakes the paused Next at once.
type Controller interface {
	// Pause stops the stream: once Pause returns, Next delivers no further
	// row and nothing more is read from the server until Resume. A Next
	// already waiting for the server when Pause is called keeps the row it
	// receives until Resume. The server, finding the connection's buffers
	// full, waits for the client (wait event ClientWrite); a cursor-backed
	// stream's server has sent its batch and is idle in its transaction.
	//
	// A blocked Next returns when Resume is called, the query's context
	// ends (with the context's error), Cancel is called (ErrCanceled), or the
	// pause timeout expires (ErrPauseTimeout, or it resumes under
	// ResumeOnPauseTimeout).
	//
	// Pause on a Paused stream does nothing and returns nil. On a Complete,
	// Failed or Closed stream it returns ErrStreamEnded.
	Pause() error
	// Resume lets a paused stream go on where it stopped. Resume on a
	// Running stream does nothing and returns nil. On a Complete, Failed or
	// Closed stream it returns ErrStreamEnded.
	Resume() error
	// Cancel ends a live stream: Next returns ErrCanceled, and the
	// server-side query is stopped by cutting the connection (which
	// database/sql then discards). A cursor-backed stream keeps its
	// connection: its cursor is closed at once by a goroutine of the
	// stream's own, even while the consumer is away from Next, after
	// reading off the batch in flight, if any, within the drain timeout
	// (in the caller's transaction a batch in flight is left to Close).
	// Cancel itself returns at once. On an ended stream Cancel returns
	// ErrStreamEnded. The pause timeout ends a stream the same way.
	Cancel() error
	// SetPauseTimeout sets the pause timeout of the pauses that start after
	// it; 0 removes the bound. A negative value is an error wrapping
	// ErrInvalidOption.
	SetPauseTimeout(d time.Duration) error
	// State returns the stream's current state.
	State() State
	// Stats returns a snapshot of the stream's counters. State and the
	// pause figures come from one moment: PausedNow > 0 exactly when State
	// is Paused.
	Stats() Stats
}

// Stats is a snapshot of one stream's counters.
type Stats struct {
	State State
	// Rows counts the rows Next delivered.
	Rows int64
	// Bytes counts the bytes of the text and binary values ([]byte and
	// string) in those rows.
	Bytes int64
	// Pauses counts the pauses: Pause calls that found the stream Running.
	Pauses int64
	// PauseTimeouts counts the pause timeouts that expired.
	PauseTimeouts int64
	// PausedTotal is the time spent paused, the current pause included.
	PausedTotal time.Duration
	// PausedNow is how long the current pause has lasted; 0 unless State
	// is Paused.
	PausedNow time.Duration
	// FirstRow is the time from the start of the query to the first row
	// Next delivered; 0 before that row.
	FirstRow time.Duration
	// Resumes counts the continuations of a resumable stream
	// (WithResumeKey) after failures; Rows counts across them.
	Resumes int64
}

// Stream is a per-query handle on a jsonstream result stream for code that
// uses database/sql. Pass it as one more argument to QueryContext or Query
// of a DB, Conn, Tx or Stmt opened with jsonstream; jsonstream removes it
// from the arguments (it takes no $n placeholder) and binds it to the rows
// of that query. From then on the Stream controls those rows, from any
// goroutine. For code that builds its query calls itself, attach the
// Stream to the query's context instead, with ContextWithStream.
//
// A Stream serves one query. Passing it to Exec, passing two Streams to one
// query, or passing a Stream a second time fails with an error wrapping
// ErrStreamArgument. Before its query starts, its controller methods
// return ErrNotStarted, State returns NotStarted and Stats are zero.
//
// While a Stream holds Next paused, Tx.Rollback, Tx.Commit and Rows.Close
// from other goroutines wait for it: see [Controller].
type Stream struct {
	opts []Option
	// checked is where NewStream tries the options; inside the Stream so
	// that trying them costs no allocation of its own.
	checked settings
	// bound is set once, when the query starts; read by the controller
	// methods from any goroutine.
	bound atomic.Pointer[rows]
	// claimed is set when a conn takes the Stream as an argument, so a
	// second query cannot take it.
	claimed atomic.Bool
}

// NewStream returns a Stream whose rows use opts on top of the
// connector's settings (WithPauseTimeout, WithPauseTimeoutAction,
// WithCloseMode, WithDrainTimeout, WithFetchSize, WithObserver,
// WithObserverQueryText, WithResumeKey, WithResumeRetry,
// WithResumeAfterPause). A bad option is an error wrapping
// ErrInvalidOption.
func NewStream(opts ...Option) (*Stream, error) {
	s := &Stream{opts: opts}
	if err := s.checked.apply(opts); err != nil {
		return nil, err
	}
	return s, nil
}

var _ Controller = (*Stream)(nil)

// Pause implements Controller.
func (s *Stream) Pause() error {
	if r := s.bound.Load(); r != nil {
		return r.Pause()
	}
	return ErrNotStarted
}

// Resume implements Controller.
func (s *Stream) Resume() error {
	if r := s.bound.Load(); r != nil {
		return r.Resume()
	}
	return ErrNotStarted
}

// Cancel implements Controller.
func (s *Stream) Cancel() error {
	if r := s.bound.Load(); r != nil {
		return r.Cancel()
	}
	return ErrNotStarted
}

// SetPauseTimeout implements Controller.
func (s *Stream) SetPauseTimeout(d time.Duration) error {
	if r := s.bound.Load(); r != nil {
		return r.SetPauseTimeout(d)
	}
	return ErrNotStarted
}

// State implements Controller.
func (s *Stream) State() State {
	if r := s.bound.Load(); r != nil {
		return r.State()
	}
	return NotStarted
}

// Stats implements Controller.
func (s *Stream) Stats() Stats {
	if r := s.bound.Load(); r != nil {
		return r.Stats()
	}
	return Stats{}
}

// Started reports whether the Stream's query has started, so that the
// controller methods reach its rows.
func (s *Stream) Started() bool { return s.bound.Load() != nil }

func streamArgError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrStreamArgument}, args...)...)
}
