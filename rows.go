package jsonstream

import (
	"context"
	"database/sql/driver"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// rows wraps the inner driver's rows of one query. It is the stream: its
// state lives in an atomic, and its pause machinery is allocated by the
// first Pause. database/sql calls Next, Close and the column methods from
// the consumer's goroutine; the Controller methods come from anywhere.
type rows struct {
	columnTypes // of inner
	inner       driver.Rows
	conn        *conn
	// cursor is inner when the stream is cursor-backed (WithFetchSize),
	// else nil: a failure then interrupts the cursor instead of cutting.
	cursor *cursor
	// portal is inner when the stream is a portal stream, else nil: a
	// failure then ends the portal instead of cutting.
	portal *portal
	// ctx is the query's context. A Next blocked by a pause watches it,
	// since database/sql cannot interrupt a driver's Next.
	ctx   context.Context
	state stateCell
	// pause is nil until the first Pause.
	pause atomic.Pointer[pauser]
	// txCtx is the context of the transaction the query runs in, if any:
	// database/sql ends the rows when it ends, so it is watched like ctx.
	txCtx context.Context
	// failure holds the error that moved the stream to Failed; stored
	// under ending, before the state changes.
	failure atomic.Pointer[error]
	// ending serializes the moves to Failed and Closed, so that a failure
	// that cuts the connection has cut it before Close can hand the
	// connection back to database/sql, and never cuts once Close ended the
	// stream (the connection may serve another query by then).
	ending sync.Mutex
	// stopWatch and stopTxWatch stop the context watches that cut a
	// stalled connection; nil when the context cannot end or the
	// connection cannot be cut. A portal stream's query context has its
	// queryWatch instead (ctxwatch.go).
	stopWatch, stopTxWatch func() bool

	// settings are the query's: the connector's, then the context's
	// (ContextWithOptions), then a Stream's options on top. Its
	// pauseTimeout is the starting value of the field below.
	settings     settings
	pauseTimeout atomic.Int64 // time.Duration; SetPauseTimeout may come from any goroutine

	// query is the statement's text: an early Close reads it to tell a
	// read, which it may cut, from a write, which it never cuts.
	query string
	// innerCtx is set when the query's context went to the inner driver,
	// which then ends the query when the context ends (a statement that
	// writes: sendQuery); jsonstream does not watch it then.
	innerCtx bool
	// txBlock is set when the session was inside a transaction block as
	// the query was sent, by the ReadyForQuery before it (frame.go): one
	// begun with Exec("BEGIN"), which database/sql does not know of. An
	// early Close then drains, as in a transaction begun with BeginTx.
	txBlock bool

	// dest is the slice the consumer's last Next filled, which Close
	// reuses to look at what is left of the result (database/sql's
	// values are void once Close is called).
	dest []driver.Value

	// closedAs is the Outcome of the Close that ended the stream live
	// (endPlan.outcome); the consumer's.
	closedAs Outcome

	// priorRows and resumes are, for a resumable stream's continuation,
	// the rows delivered and the continuations made before it; continues
	// is set when it goes on a stream that started, whose events it does
	// not repeat (resume.go).
	priorRows, priorBytes, resumes int64
	continues                      bool
	// holdStart makes bindRows leave EventStarted and the Stream's binding
	// to its caller: a resumable query that checks its key columns first,
	// and fires no event when they fail it (conn.query).
	holdStart bool
	// streamQuery is, for a continuation, the text of the stream's own
	// query, which its events carry instead of the continuation's.
	streamQuery string
	// closedReleased is set when the consumer closed the stream in a
	// pause that had let its query go (release.go): the rows failed with
	// ErrPauseReleased to end the query, but to the consumer and the
	// Observer the stream was closed early.
	closedReleased atomic.Bool
	// resumer is the resumable stream the rows are a part of, if any: it
	// takes the Stream's controls while a continuation is being made.
	resumer *resumeRows

	start     instant
	firstRow  atomic.Int64 // time.Duration since start; 0 before the first row
	rowCount  atomic.Int64
	byteCount atomic.Int64
	// obs is what the stream keeps for its observer; nil without one
	// (allocRows).
	obs *observation
	// ended is inner once the stream's portal went back to its connection
	// (recycle.go).
	ended endedRows
}

var (
	_ driver.Rows                           = (*rows)(nil)
	_ driver.RowsNextResultSet              = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeLength           = (*rows)(nil)
	_ driver.RowsColumnTypeNullable         = (*rows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*rows)(nil)
	_ Controller                            = (*rows)(nil)
)

// newRows allocates the stream of one query with the query's settings:
// the connection's, then the options of its context (ContextWithOptions),
// then those of its Stream, if any (checked when they were made). They
// are applied here, to the stream itself, so that no copy of them
// escapes; open completes the stream once the query runs. A stream with
// options is laid out for an observer, which they may name.
func newRows(ctx context.Context, c *conn, s *Stream) *rows {
	v := fromContext(ctx)
	if v == nil && s == nil {
		return allocRows(*c.settings)
	}
	o := &observedRows{rows: rows{settings: *c.settings}}
	r := &o.rows
	if v != nil {
		_ = r.settings.apply(v.opts)
	}
	if s != nil {
		_ = r.settings.apply(s.opts)
	}
	if r.settings.observer != nil {
		o.observe()
	}
	return r
}

// open wraps inner, the query's rows; start is when the query started
// (conn.queryStart), cur the cursor when inner is one.
func (r *rows) open(ctx context.Context, c *conn, inner driver.Rows, start instant, cur *cursor) {
	r.inner, r.conn, r.cursor, r.ctx, r.start = inner, c, cur, ctx, start
	r.columnTypes = columnTypes{inner}
	c.singleOpen = c.wireOK && cur == nil && r.portal == nil
	c.open = r
	if cur != nil {
		cur.r = r
	}
	r.pauseTimeout.Store(int64(r.settings.pauseTimeout))
	if c.txCtx != nil && c.txCtx != ctx {
		r.txCtx = c.txCtx
	}
	if c.sock != nil {
		// A Next stuck on a stalled network is beyond database/sql's reach
		// and lib/pq's (its cancel request travels the same network):
		// cutting the connection is what frees it.
		if w := r.queryWatch(); w != nil {
			w.opened()
		} else if ctx.Done() != nil && !r.innerCtx {
			r.stopWatch = context.AfterFunc(ctx, func() { r.fail(ctx.Err(), true) })
		}
		if r.txCtx != nil && r.txCtx.Done() != nil {
			tx := r.txCtx
			r.stopTxWatch = context.AfterFunc(tx, func() { r.fail(tx.Err(), true) })
		}
	}
}

// queryWatch is the watch of a portal stream's query context, nil for
// another stream or a context that cannot end.
func (r *rows) queryWatch() *queryWatch {
	if r.portal == nil {
		return nil
	}
	return r.portal.watch
}

// cancellable reports whether the query's context, or its transaction's,
// can end.
func (r *rows) cancellable() bool {
	return r.ctx != nil && r.ctx.Done() != nil || r.txDone() != nil
}

// txDone is the Done channel of the transaction's context; nil (never
// ready) outside a transaction.
func (r *rows) txDone() <-chan struct{} {
	if r.txCtx == nil {
		return nil
	}
	return r.txCtx.Done()
}

// Columns implements driver.Rows.
func (r *rows) Columns() []string { return r.inner.Columns() }

// Next implements driver.Rows. It calls the inner Next only while the
// stream is Running.
func (r *rows) Next(dest []driver.Value) error {
	if s := r.state.load(); s != Running && s != Complete {
		if err := r.await(); err != nil {
			return err
		}
	}
	r.dest = dest
	if err := r.inner.Next(dest); err != nil {
		return r.nextFailed(err)
	}
	if r.state.load() != Running {
		// A Pause (or Cancel) came while the row was on its way. Keep it
		// until Resume, so no row is delivered after Pause returned.
		if err := r.await(); err != nil {
			return err
		}
	}
	var n int64
	for _, v := range dest {
		switch v := v.(type) {
		case []byte:
			n += int64(len(v))
		case string:
			n += int64(len(v))
		}
	}
	r.byteCount.Add(n)
	if r.rowCount.Add(1) == 1 {
		r.firstRow.Store(int64(max(r.start.elapsed(), 1)))
		if r.settings.observer != nil && !r.continues {
			r.observeFirstRow()
			if r.state.load() != Running {
				// A Pause while the observer heard of the row: hold it.
				return r.await()
			}
		}
	}
	return nil
}

// nextFailed handles an error from the inner Next.
func (r *rows) nextFailed(err error) error {
	if err == io.EOF { //nolint:errorlint // drivers return io.EOF itself, and database/sql compares with ==
		if next, ok := r.inner.(driver.RowsNextResultSet); ok && next.HasNextResultSet() {
			return err
		}
		if _, ok := r.state.finish(Complete); ok {
			r.endPause()
			return err
		}
		if r.state.load() == Failed {
			return r.err() // a Cancel, timeout or context came first
		}
		return err
	}
	if r.state.load() == Failed {
		// jsonstream cut the connection (Cancel, pause timeout, context):
		// report why rather than the read error the cut caused.
		return r.err()
	}
	if r.cursor == nil {
		err = sessionError(err, r.conn) // the cursor did it already
	}
	if ctxErr := r.ctx.Err(); ctxErr != nil {
		r.fail(ctxErr, false)
		return r.err()
	}
	if !r.fail(err, false) && r.state.load() == Failed {
		return r.err() // a Cancel or timeout came first
	}
	return err
}

// err returns the error that failed the stream.
func (r *rows) err() error {
	if p := r.failure.Load(); p != nil {
		return *p
	}
	return ErrStreamEnded
}

// fail moves a live stream to Failed with err and, when cut is set, cuts
// the connection so the server stops the query. It reports whether it
// made the change.
func (r *rows) fail(err error, cut bool) bool {
	ok := r.failState(err, cut)
	if ok {
		r.endPause()
		if cut {
			r.release()
		}
	}
	return ok
}

// Cancel implements Controller.
func (r *rows) Cancel() error {
	if rr := r.resumer; rr != nil {
		if held, err := rr.control(rr.cancelRetry); held {
			return err
		}
	}
	if r.failState(ErrCanceled, true) {
		r.endPause()
		r.releaseAsync()
		return nil
	}
	return ended(r.state.load())
}

// release frees the server's side of a stream that a Cancel, the pause
// timeout or the context just failed, from the failure's goroutine and
// outside any lock of the stream's: a cursor is closed at once. A single
// statement needs nothing more: stopServer cut it.
func (r *rows) release() {
	if r.cursor != nil {
		r.cursor.release()
	}
	if r.portal != nil {
		r.portal.release()
	}
}

// endNow is release for a caller that must find the server's side of
// the stream ended when it returns (endForTx).
func (r *rows) endNow() {
	if r.cursor != nil {
		r.cursor.endNow()
	}
	if r.portal != nil {
		r.portal.endNow()
	}
}

// releaseAsync is release for a caller that must return at once
// (Cancel): a goroutine of the stream's own ends the cursor; it ends with
// that round trip, bounded as Close's.
func (r *rows) releaseAsync() {
	if r.cursor != nil {
		go r.cursor.release()
	}
	if r.portal != nil {
		go r.portal.release()
	}
}

// failState is fail without ending the pause, for callers that hold the
// pauser's lock.
func (r *rows) failState(err error, cut bool) bool {
	r.ending.Lock()
	defer r.ending.Unlock()
	if r.state.load().final() {
		return false
	}
	r.failure.Store(&err)
	if _, ok := r.state.finish(Failed); !ok {
		return false // Next reached the end just now
	}
	if cut {
		r.stopServer()
	}
	return true
}

// stopServer stops the server's side of a failing stream: a cursor-backed
// stream's server is idle between batches, or gets the drain timeout to
// finish the batch in flight; a single statement is cut.
func (r *rows) stopServer() {
	if r.cursor != nil {
		r.cursor.interrupt()
		return
	}
	if r.portal != nil {
		r.portal.interrupt()
		return
	}
	r.conn.cut()
}

// Close implements driver.Rows. A stream with rows left is ended as its
// CloseMode says.
func (r *rows) Close() (err error) {
	if c := r.conn; c != nil {
		defer func() {
			if c.open == r {
				c.open = nil
			}
		}()
		if r.cursor == nil && r.portal == nil {
			defer func() { c.singleOpen = false }()
		}
	}
	if r.settings.observer != nil {
		defer func() { err = r.observeEnd(err) }()
	}
	r.ending.Lock()
	from, live := r.state.finish(Closed)
	r.ending.Unlock()
	if w := r.queryWatch(); w != nil {
		// The portal's end may be bounded by it (portal.watchEnd).
		w.closing()
		defer w.stop()
	}
	if r.stopWatch != nil {
		r.stopWatch()
	}
	if r.stopTxWatch != nil {
		r.stopTxWatch()
	}
	if !live {
		err := r.inner.Close()
		if from == Failed && r.conn.isCut() {
			return nil // the stream already reported why it failed
		}
		if from == Complete && r.portal != nil {
			r.recycle()
		}
		return err
	}
	r.endPause()
	if p := r.portal; p != nil {
		// The portal plans its own end; the plan here only names the
		// outcome, which a whole result does not need.
		err = p.Close()
		if p.whole && err == nil {
			r.closedWhole()
		} else {
			plan := planEnd(r.endFacts(false), r.settings.drainTimeout)
			if p.readOff {
				plan.finish = true // nothing was left to stop: the rest was read off
			}
			r.closedAs = plan.outcome(false, r.conn.isCut(), r.contextErr())
		}
		r.recycle()
		return err
	}
	plan := planEnd(r.endFacts(false), r.settings.drainTimeout)
	var whole bool
	if r.cursor != nil {
		err = r.cursor.Close()
		whole = r.cursor.whole
	} else {
		whole, err = r.closeSingle(plan)
	}
	if whole && err == nil {
		r.closedWhole()
		return err
	}
	r.closedAs = plan.outcome(false, r.conn.isCut(), r.contextErr())
	return err
}

// closedWhole notes that Close found nothing of the result left unread:
// it was received whole (QueryRow), and the stream is Complete, not
// Closed.
func (r *rows) closedWhole() {
	r.state.cas(Closed, Complete)
	r.closedAs = OutcomeComplete
}

// endFacts are the facts of this stream's ending (end.go); failed says
// whether it failed first.
func (r *rows) endFacts(failed bool) endFacts {
	f := endFacts{
		cursor:    r.cursor != nil,
		portal:    r.portal != nil,
		closeMode: r.settings.closeMode,
		failed:    failed,
		canCut:    r.conn.sock != nil,
	}
	if cur := r.cursor; cur != nil {
		f.callersTx = !cur.own
		f.locks = f.callersTx && !failed && scanQuery(r.query).locks
	} else if p := r.portal; p != nil {
		f.callersTx, f.writes, f.locks = p.before != txStatusIdle, p.text.writes, p.text.locks
	} else {
		f.callersTx, f.writes = r.conn.inTx || r.txBlock, scanQuery(r.query).writes
	}
	return f
}

// closeSingle carries out plan for a single-statement stream that Close
// found live. It reports whether nothing of the result was left unread.
func (r *rows) closeSingle(plan endPlan) (whole bool, err error) {
	if s := r.conn.sock; s != nil && s.frames.idle() {
		// The result's ReadyForQuery has reached lib/pq (frame.go): the
		// rest is in its buffer, and reading it off waits on nothing.
		// Whatever the plan, the connection is kept.
		return r.drain()
	}
	switch plan.read {
	case readToEnd:
		return r.drain()
	case readLook:
		// What has arrived is looked at, never waited for beyond the
		// drain's grace: a result received whole (QueryRow's) keeps the
		// connection.
		if s := r.conn.sock; s.beginDrain(time.Now()) {
			if r.atEnd() == io.EOF && s.endDrain() { //nolint:errorlint // atEnd returns io.EOF itself
				return true, r.inner.Close()
			}
		}
		r.conn.cut()
		_ = r.inner.Close() // fails fast on the cut connection
		return false, nil
	}
	return r.drainOrCut()
}

// drain reads off the rest of the result, as lib/pq's Close does, and
// reports whether nothing was left of it. It returns the first error met.
func (r *rows) drain() (whole bool, err error) {
	err = r.atEnd()
	if err == io.EOF { //nolint:errorlint // atEnd returns io.EOF itself
		return true, r.inner.Close()
	}
	cerr := r.inner.Close()
	if err != nil {
		return false, err
	}
	return false, cerr
}

// atEnd reads what follows the rows the consumer has read: io.EOF when
// the result ends there (no row, and no further result set), nil when a
// row follows (it is skipped), or the error met.
func (r *rows) atEnd() error {
	dest := r.dest
	if dest == nil {
		dest = make([]driver.Value, len(r.inner.Columns()))
	}
	err := r.inner.Next(dest)
	if err == io.EOF && r.HasNextResultSet() { //nolint:errorlint // drivers return io.EOF itself
		return nil // more to read
	}
	return err
}

// drainOrCut is the readBounded end of a single-statement read: a drain
// bounded by the drain timeout, and a cut past it.
func (r *rows) drainOrCut() (bool, error) {
	s := r.conn.sock
	if !s.beginDrain(time.Now().Add(r.settings.drainTimeout)) {
		r.conn.cut()
		_ = r.inner.Close()
		return false, nil
	}
	whole, err := r.drain()
	if err != nil && isTimeout(err) {
		r.conn.cut()
		return false, nil
	}
	if !s.endDrain() {
		r.conn.cut() // the rest is unread, or the next query would time out
		return false, nil
	}
	return whole, err
}

// HasNextResultSet implements driver.RowsNextResultSet.
func (r *rows) HasNextResultSet() bool {
	if next, ok := r.inner.(driver.RowsNextResultSet); ok {
		return next.HasNextResultSet()
	}
	return false
}

// NextResultSet implements driver.RowsNextResultSet. Without it on the
// inner rows, database/sql would report no further result set; io.EOF
// does the same.
func (r *rows) NextResultSet() error {
	if next, ok := r.inner.(driver.RowsNextResultSet); ok {
		return next.NextResultSet()
	}
	return io.EOF
}

// State implements Controller.
func (r *rows) State() State {
	st := r.state.load()
	if st == Failed && r.closedReleased.Load() {
		return Closed
	}
	if st.final() {
		if held, ok := r.resumer.controlState(); ok {
			return held
		}
	}
	return st
}

// Stats implements Controller.
func (r *rows) Stats() Stats {
	st := Stats{
		State:    r.State(),
		Rows:     r.rowCount.Load() + r.priorRows,
		Bytes:    r.byteCount.Load() + r.priorBytes,
		Resumes:  r.resumes,
		FirstRow: time.Duration(r.firstRow.Load()),
	}
	// A stream that was not Paused when State was read has no pauser yet,
	// or had one already: Pause allocates it before the state changes.
	if p := r.pause.Load(); p != nil {
		p.mu.Lock()
		p.snapshot(r.State, &st)
		r.resumer.heldStats(&st)
		p.mu.Unlock()
	}
	return st
}

func ended(s State) error {
	if s == Complete || s == Failed || s == Closed {
		return &stateError{s}
	}
	return ErrStreamEnded
}

// stateError is ErrStreamEnded naming the state the stream ended in.
type stateError struct{ state State }

// Error implements error.
func (e *stateError) Error() string { return ErrStreamEnded.Error() + " (" + e.state.String() + ")" }

// Is makes errors.Is(err, ErrStreamEnded) hold.
func (e *stateError) Is(target error) bool { return target == ErrStreamEnded }
