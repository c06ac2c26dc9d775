package jsonstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Observer receives the events of every stream it is set on, to feed
// metrics, traces or logs. Set it on a Connector or Driver with
// WithObserver, or on one query with a Stream's WithObserver, which
// replaces the connector's for that query.
//
// The contract, for each stream:
//   - Events are delivered one at a time, in the order they happened, and
//     EventEnded is the last one, delivered before the Close that ended
//     the stream returns.
//   - ObserveStream is called synchronously, never while jsonstream holds
//     a lock, so it may call the stream's Controller methods. It runs on
//     the goroutine whose call caused the event (listed at each
//     EventKind), unless another goroutine is delivering an event of the
//     same stream at that moment: that goroutine then delivers this one
//     too, after its own. ObserveStream must therefore be safe for
//     concurrent use across streams, and must not wait for another
//     goroutine's call on the same stream.
//   - A panic in ObserveStream is recovered, so that the stream and
//     database/sql's accounting of its connection complete as if it had
//     not happened; the stream's Close then returns an
//     *ObserverPanicError (wrapping ErrObserverPanic) unless it has an
//     error of its own. An observer must not close the rows it observes.
//
// An event never carries the query's arguments, and carries the query
// text only under WithObserverQueryText(true).
type Observer interface {
	ObserveStream(Event)
}

// ObserverFunc makes an ordinary function an Observer.
type ObserverFunc func(Event)

// ObserveStream implements Observer.
func (f ObserverFunc) ObserveStream(e Event) { f(e) }

// EventKind says what happened to a stream.
type EventKind uint8

const (
	// EventStarted means the query was sent and the inner driver returned
	// its rows. From the goroutine that called Query; a stream's first
	// event.
	EventStarted EventKind = iota
	// EventFirstRow means Next delivered the stream's first row;
	// Stats.FirstRow is the time since the query started. From the
	// goroutine that called Next.
	EventFirstRow
	// EventPaused means Pause paused a running stream (a Pause on a paused
	// one fires nothing). From the goroutine that called Pause.
	EventPaused
	// EventResumed means a pause ended by Resume, or by the pause timeout
	// under ResumeOnPauseTimeout (after EventPauseTimeout); Event.Paused is
	// how long it lasted. From the goroutine that called Resume, or the
	// pause timer's.
	EventResumed
	// EventPauseTimeout means a pause outlived the pause timeout;
	// Event.Paused is how long it lasted. It fires before the timeout takes
	// effect (the stream is still Paused); then the stream fails under
	// FailOnPauseTimeout, or resumes under ResumeOnPauseTimeout
	// (EventResumed follows), unless a Resume or Close came meanwhile.
	// From the pause timer's goroutine: a slow observer delays the
	// timeout's effect.
	EventPauseTimeout
	// EventEnded means the stream was closed; it fires exactly once, with
	// the final Stats, the Outcome and the error. It is the last event: a
	// Pause, Resume or pause timeout that races with Close on another
	// goroutine is told before it, or not at all. A stream that failed (Cancel, context, pause
	// timeout, a server error) fires it when it is closed. From the
	// goroutine that closed the rows: the consumer's, or database/sql's
	// own when the query's context ends.
	EventEnded
	// EventContinued means a resumable stream (WithResumeKey) got past a
	// failure: its continuation delivered its first row. Event.Err is the
	// failure, Event.Continued the time from it to that row, and
	// Stats.Resumes counts the continuations so far. From the goroutine
	// that called Next.
	EventContinued
)

// String returns the kind's name, as in "paused".
func (k EventKind) String() string {
	switch k {
	case EventStarted:
		return "started"
	case EventFirstRow:
		return "first_row"
	case EventPaused:
		return "paused"
	case EventResumed:
		return "resumed"
	case EventPauseTimeout:
		return "pause_timeout"
	case EventEnded:
		return "ended"
	case EventContinued:
		return "continued"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// StreamMode says how a stream reads its rows from the server.
type StreamMode uint8

const (
	// ModeSingle streams the result of one statement, as the server sends
	// it.
	ModeSingle StreamMode = iota
	// ModeCursor reads the result through a server-side cursor, in batches.
	ModeCursor
	// ModePortal runs the statement in a portal of the extended protocol,
	// a batch of rows per Execute with a window of Executes outstanding
	// (portal.go).
	ModePortal
)

// String returns "single", "cursor" or "portal".
func (m StreamMode) String() string {
	switch m {
	case ModeSingle:
		return "single"
	case ModeCursor:
		return "cursor"
	case ModePortal:
		return "portal"
	}
	return fmt.Sprintf("StreamMode(%d)", uint8(m))
}

// Outcome says how a stream ended.
type Outcome uint8

const (
	// OutcomeNone is the Outcome of every event but EventEnded: it means
	// nothing.
	OutcomeNone Outcome = iota
	// OutcomeComplete means the whole result was received: every row was
	// read, or the stream was closed with nothing left unread (QueryRow).
	OutcomeComplete
	// OutcomeDrained means the stream was closed early, and the rest of
	// the result was read and thrown away, keeping the connection.
	OutcomeDrained
	// OutcomeCut means the stream was closed early, and the connection was
	// cut to stop the server-side query.
	OutcomeCut
	// OutcomeCursorClosed means the stream was closed early, and its
	// server-side cursor was closed, keeping the connection.
	OutcomeCursorClosed
	// OutcomePortalClosed means the stream was closed early, and its
	// portal was closed, keeping the connection (ModePortal).
	OutcomePortalClosed
	// OutcomeCanceled means the stream failed by Cancel (ErrCanceled).
	OutcomeCanceled
	// OutcomeContext means the stream ended because the query's context,
	// or its transaction's, ended; database/sql then closes the rows
	// itself, so the stream may be Closed rather than Failed.
	OutcomeContext
	// OutcomePauseTimeout means the stream failed by the pause timeout
	// (ErrPauseTimeout).
	OutcomePauseTimeout
	// OutcomeFailed means the stream failed by an error from the server,
	// the network or the inner driver.
	OutcomeFailed
)

// String returns the outcome's name, as in "pause_timeout".
func (o Outcome) String() string {
	switch o {
	case OutcomeNone:
		return "none"
	case OutcomeComplete:
		return "complete"
	case OutcomeDrained:
		return "drained"
	case OutcomeCut:
		return "cut"
	case OutcomeCursorClosed:
		return "cursor_closed"
	case OutcomePortalClosed:
		return "portal_closed"
	case OutcomeCanceled:
		return "canceled"
	case OutcomeContext:
		return "context"
	case OutcomePauseTimeout:
		return "pause_timeout"
	case OutcomeFailed:
		return "failed"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Event is one thing that happened to a stream. Fields that do not apply
// to its Kind are zero.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Context is the query's context (context.Background for a Query
	// without one), so an observer finds the query's span in it.
	Context context.Context
	// Query is the query text under WithObserverQueryText(true); empty
	// otherwise. A resumable stream's events carry its own query, also
	// after a continuation, whose text the stream builds (resume.go).
	Query string
	// Mode is how the stream reads its rows.
	Mode StreamMode
	// Stats are the stream's counters when the event fired.
	Stats Stats
	// Paused is how long a pause lasted: the one EventResumed ended, the
	// one that outlived the timeout on EventPauseTimeout, and on
	// EventEnded the one that ended with the stream (EndedPaused).
	Paused time.Duration
	// Continued is, on EventContinued, the time from the failure to the
	// continuation's first row.
	Continued time.Duration

	// The fields below are set on EventEnded only.

	// Outcome is how the stream ended.
	Outcome Outcome
	// Err is the error that failed the stream, or the one Close returned.
	Err error
	// EndedPaused reports that the stream was paused when it ended (by
	// Close, a failure, or reaching its end), so no EventResumed ends its
	// last pause.
	EndedPaused bool
	// ConnCut reports that jsonstream cut the stream's connection: on an
	// early Close, Cancel, the pause timeout or the end of the context.
	ConnCut bool
}

// WithObserver sets the Observer that receives the events of the streams.
// On a Stream it replaces the connector's Observer for that query. A nil
// Observer is an error.
func WithObserver(o Observer) Option {
	return func(s *settings) error {
		if f, ok := o.(ObserverFunc); o == nil || ok && f == nil {
			return invalid("WithObserver", o, "nil Observer")
		}
		s.observer = o
		return nil
	}
}

// WithObserverQueryText sets whether events carry the query text
// (Event.Query); the default is false, since a query text may hold what a
// dashboard should not show.
func WithObserverQueryText(include bool) Option {
	return func(s *settings) error {
		s.observeQuery = include
		return nil
	}
}

// ErrObserverPanic is wrapped by the error Close returns when the
// stream's Observer panicked (ObserverPanicError).
var ErrObserverPanic = errors.New("jsonstream: the observer panicked")

// ObserverPanicError is what Close returns when an Observer panicked on
// one of the stream's events and Close had no error of its own: the
// panic was recovered and the stream went on.
type ObserverPanicError struct {
	// Kind is the event whose delivery panicked (the first, if several).
	Kind EventKind
	// Value is what the observer passed to panic.
	Value any
}

// Error implements error.
func (e *ObserverPanicError) Error() string {
	return fmt.Sprintf("%s on %s: %v", ErrObserverPanic, e.Kind, e.Value)
}

// Unwrap returns ErrObserverPanic.
func (e *ObserverPanicError) Unwrap() error { return ErrObserverPanic }

// observation is what a stream keeps for its observer. Only a stream
// with an observer has one (allocRows): the rest pay nothing for it.
type observation struct {
	query string
	// ended is set by the Close that fires EventEnded, so it fires once
	// whoever closes the rows and how often.
	ended atomic.Bool
	// mu guards the fields below: the events waiting for delivery, in
	// the order they happened, and who delivers them. It is taken inside
	// the pauser's lock, so that a pause's events queue in the order of
	// its transitions; never while the observer runs.
	mu sync.Mutex
	// idle is signaled when the queue is empty and nobody delivers.
	idle       sync.Cond
	queue      []Event
	buf        [1]Event // queue's backing array while one event waits
	delivering bool
	// queued and delivered count the events, for a caller that waits for
	// its own event (the pause timer).
	queued, delivered uint64
	// panicked is the first panic of the observer, for Close.
	panicked *ObserverPanicError
}

// observedRows is a stream with an observer laid out with its
// observation, so that it costs one allocation, as a stream without one.
type observedRows struct {
	rows
	obs observation
}

// allocRows allocates a stream with its final settings, and what its
// observer needs when they name one.
func allocRows(set settings) *rows {
	if set.observer == nil {
		return &rows{settings: set}
	}
	o := &observedRows{rows: rows{settings: set}}
	o.observe()
	return &o.rows
}

// observe readies the delivery of events: the stream has an observer.
func (o *observedRows) observe() {
	o.obs.idle.L = &o.obs.mu
	o.obs.queue = o.obs.buf[:0]
	o.rows.obs = &o.obs
}

// endUnobserved marks the stream's end as one that fires no EventEnded
// (resume.go): a continuation takes its place.
func (r *rows) endUnobserved() {
	if r.obs != nil {
		r.obs.ended.Store(true)
	}
}

// enqueue adds e to the events waiting for delivery and returns its
// number. Callers that order events by a lock of their own (the pauser's)
// call it under that lock.
func (r *rows) enqueue(e Event) uint64 {
	o := r.obs
	o.mu.Lock()
	o.queue = append(o.queue, e)
	o.queued++
	n := o.queued
	o.mu.Unlock()
	return n
}

// deliver hands the waiting events to the observer one at a time, in
// order, unless another goroutine is doing so already (it delivers them
// then).
func (r *rows) deliver() {
	o := r.obs
	o.mu.Lock()
	if o.delivering {
		o.mu.Unlock()
		return
	}
	o.delivering = true
	for len(o.queue) > 0 {
		e := o.queue[0]
		n := copy(o.queue, o.queue[1:])
		o.queue[n] = Event{} // drop the references
		o.queue = o.queue[:n]
		o.mu.Unlock()
		r.callObserver(e)
		o.mu.Lock()
		o.delivered++
		o.idle.Broadcast()
	}
	o.delivering = false
	o.idle.Broadcast()
	o.mu.Unlock()
}

// emit delivers e now, or after the events queued before it.
func (r *rows) emit(e Event) {
	r.enqueue(e)
	r.deliver()
}

// waitDelivered returns once event number n was delivered.
func (r *rows) waitDelivered(n uint64) {
	o := r.obs
	o.mu.Lock()
	for o.delivered < n {
		o.idle.Wait()
	}
	o.mu.Unlock()
}

// callObserver calls the observer with e, recovering a panic.
func (r *rows) callObserver(e Event) {
	defer func() {
		if v := recover(); v != nil {
			r.obs.mu.Lock()
			if r.obs.panicked == nil {
				r.obs.panicked = &ObserverPanicError{Kind: e.Kind, Value: v}
			}
			r.obs.mu.Unlock()
		}
	}()
	r.settings.observer.ObserveStream(e)
}

// mode is how the stream reads its rows.
func (r *rows) mode() StreamMode {
	switch {
	case r.cursor != nil:
		return ModeCursor
	case r.portal != nil:
		return ModePortal
	}
	return ModeSingle
}

// event returns an event of kind about r, with its current Stats.
func (r *rows) event(kind EventKind) Event {
	return Event{Kind: kind, Context: r.ctx, Query: r.obs.query, Mode: r.mode(), Stats: r.Stats()}
}

// eventLocked is event for a caller that holds p.mu.
func (r *rows) eventLocked(kind EventKind, p *pauser) Event {
	e := Event{Kind: kind, Context: r.ctx, Query: r.obs.query, Mode: r.mode()}
	e.Stats = Stats{Rows: r.rowCount.Load() + r.priorRows, Bytes: r.byteCount.Load() + r.priorBytes, FirstRow: time.Duration(r.firstRow.Load()), Resumes: r.resumes}
	p.snapshot(r.state.load, &e.Stats)
	return e
}

// observeStarted fires EventStarted; query is the statement's text.
func (r *rows) observeStarted(query string) {
	if r.settings.observer == nil {
		return
	}
	if r.streamQuery != "" {
		query = r.streamQuery
	}
	if r.settings.observeQuery {
		r.obs.query = query
	}
	if !r.continues { // a continuation goes on the stream (resume.go)
		r.emit(r.event(EventStarted))
	}
}

// observeGaveUp fires the EventEnded of a resumable stream that could not
// be continued, whose rows were closed already (resume.go).
func (r *rows) observeGaveUp(err error) {
	if r.settings.observer != nil {
		e := r.event(EventEnded)
		e.Outcome, e.Err = OutcomeFailed, err
		switch {
		case errors.Is(err, ErrCanceled):
			e.Outcome = OutcomeCanceled
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			e.Outcome = OutcomeContext
		}
		r.emit(e)
	}
}

// observeReleasedResume fires the EventResumed of a pause that a
// resumable stream held after ending its server-side query (release.go).
func (r *rows) observeReleasedResume(paused time.Duration) {
	if r.settings.observer != nil {
		e := r.event(EventResumed)
		e.Paused = max(paused, 1)
		r.emit(e)
	}
}

// observeContinued fires EventContinued (resume.go).
func (r *rows) observeContinued(cause error, took time.Duration) {
	if r.settings.observer != nil {
		e := r.event(EventContinued)
		e.Err, e.Continued = cause, took
		r.emit(e)
	}
}

// observeFirstRow fires EventFirstRow.
func (r *rows) observeFirstRow() {
	if r.settings.observer != nil {
		r.emit(r.event(EventFirstRow))
	}
}

// queuePause queues, under p.mu, the event of a pause transition that
// just happened: EventPaused, EventResumed or EventPauseTimeout, with the
// pause's length for the last two. The caller delivers it once it has
// unlocked p.mu. It returns the event's number, 0 without an observer.
func (r *rows) queuePause(kind EventKind, p *pauser, paused time.Duration) uint64 {
	if r.settings.observer == nil {
		return 0
	}
	e := r.eventLocked(kind, p)
	e.Paused = paused
	return r.enqueue(e)
}

// deliverQueued delivers what queuePause queued.
func (r *rows) deliverQueued(n uint64) {
	if n != 0 {
		r.deliver()
	}
}

// observeTimeout fires EventPauseTimeout from the pause timer, called and
// returning with p.mu held. The event is delivered before the timeout
// takes effect, so that the stream's end follows it, with p.mu unlocked,
// so that a slow observer holds up only the timeout and may itself
// Resume. It reports whether the pause is still the one that expired; if
// not, p.mu is unlocked.
func (r *rows) observeTimeout(p *pauser, generation uint64) bool {
	n := r.queuePause(EventPauseTimeout, p, max(time.Since(p.pausedAt), 1))
	p.mu.Unlock()
	r.deliver()
	r.waitDelivered(n)
	p.mu.Lock()
	if p.generation != generation || r.state.load() != Paused {
		p.mu.Unlock()
		return false
	}
	return true
}

// observeEnd fires EventEnded after Close, which returned closeErr, and
// returns once every event of the stream was delivered. The final state
// says who ended the stream: Close itself (Closed), the end of the
// result (Complete), or a failure before Close (Failed). It returns the
// error for Close: closeErr, or the observer's panic.
func (r *rows) observeEnd(closeErr error) error {
	if r.settings.observer == nil || !r.obs.ended.CompareAndSwap(false, true) {
		return closeErr
	}
	var e Event
	// Queued under the pauser's lock, after any pause transition that
	// came before the end: no pause event can follow it.
	if p := r.pause.Load(); p != nil {
		p.mu.Lock()
		e = r.eventLocked(EventEnded, p)
		if p.pauses > p.resumes {
			e.EndedPaused, e.Paused = true, p.last
		}
		r.endOutcome(&e, closeErr)
		r.enqueue(e)
		p.mu.Unlock()
	} else {
		e = r.event(EventEnded)
		r.endOutcome(&e, closeErr)
		r.enqueue(e)
	}
	r.deliver()
	o := r.obs
	o.mu.Lock()
	for o.delivering || len(o.queue) > 0 {
		o.idle.Wait()
	}
	panicked := o.panicked
	o.mu.Unlock()
	if closeErr == nil && panicked != nil {
		return panicked
	}
	return closeErr
}

// endOutcome fills in the Outcome, Err and ConnCut of e, the EventEnded
// of a stream whose Close returned closeErr: the Outcome the end plan
// recorded (end.go) when Close ended the stream, complete when Next
// reached the end, and what the failure's error says when it failed.
func (r *rows) endOutcome(e *Event, closeErr error) {
	e.Err = closeErr
	e.ConnCut = r.conn.isCut()
	switch {
	case r.closedReleased.Load():
		// The release ended the query as an early close in the stream's
		// mode ends it.
		e.Stats.State = Closed
		e.Outcome = OutcomePortalClosed
		switch r.mode() {
		case ModeCursor:
			e.Outcome = OutcomeCursorClosed
		case ModeSingle:
			e.Outcome = OutcomeCut
		}
	case e.Stats.State == Failed && errors.Is(r.err(), ErrPauseReleased) && r.contextErr() != nil:
		e.Outcome, e.Err = OutcomeContext, r.contextErr()
	case e.Stats.State == Failed:
		e.Err = r.err()
		e.Outcome = failureOutcome(e.Err)
	case r.closedAs == OutcomeContext:
		e.Outcome, e.Err = OutcomeContext, r.contextErr()
	case r.closedAs != OutcomeNone:
		e.Outcome = r.closedAs
	default:
		e.Outcome = OutcomeComplete // Next reached the end of the result
	}
}

// contextErr is the error of the query's context or its transaction's,
// whichever ended.
func (r *rows) contextErr() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	if r.txCtx != nil {
		return r.txCtx.Err()
	}
	return nil
}

// failureOutcome tells why a stream failed from the error that failed it.
func failureOutcome(err error) Outcome {
	switch {
	case errors.Is(err, ErrCanceled):
		return OutcomeCanceled
	case errors.Is(err, ErrPauseTimeout):
		return OutcomePauseTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return OutcomeContext
	}
	return OutcomeFailed
}
