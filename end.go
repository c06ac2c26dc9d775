package jsonstream

import "time"

// How a stream ends is decided here, and only here. planEnd takes what
// decides an ending and returns the plan; rows.Close (closeSingle) and the
// cursor's end (cursor.close, which a failure reaches through release)
// carry it out, and endPlan.outcome names the Outcome of what happened,
// which the observer reports.
//
// A stream ends in one of three ways: Next reaches the end of the result
// (Complete: nothing left to do), a failure (Cancel, the pause timeout,
// the query's context, an error) ends it from any goroutine, or Close ends
// it before the end. A failure of a single-statement stream cuts the
// connection (stopServer), and its Close has nothing left to plan; every
// other ending is planned.

// endFacts is what decides how a stream ends.
type endFacts struct {
	// cursor is set for a cursor-backed stream, portal for a portal
	// stream.
	cursor, portal bool
	// callersTx is set when the stream runs in the caller's transaction:
	// one begun with BeginTx, or, for a cursor, any not begun by
	// jsonstream. Ending the stream must never end it.
	callersTx bool
	// writes is set when the statement may write (scanQuery): ending it
	// early must not change what it wrote. Cursor mode runs only reads.
	writes bool
	// locks is set when the statement locks the rows it reads (FOR
	// UPDATE, FOR SHARE: scanQuery), which the server does as it runs
	// past each.
	locks bool
	// closeMode is the stream's CloseMode.
	closeMode CloseMode
	// failed is set when the stream failed before its end is carried out
	// (a cursor's end run by release, or by the Close that follows).
	failed bool
	// canCut is set when jsonstream dialed the connection, so it can cut
	// it and bound its reads.
	canCut bool
}

// endRead is how a plan reads off the reply in flight, if there is one:
// the rest of a single statement's result, or a cursor's batch.
type endRead uint8

const (
	// readToEnd reads it to its end however long the server takes, as
	// lib/pq's Close does.
	readToEnd endRead = iota
	// readBounded reads it within the drain timeout, and cuts past it.
	readBounded
	// readLook looks only at what has arrived (drainGrace): when that is
	// the end of the result, the connection is kept; otherwise it is cut.
	readLook
)

// endStmt is the statement that ends a cursor once its batch is read.
type endStmt uint8

const (
	// stmtNone: a single statement has nothing to end.
	stmtNone endStmt = iota
	// stmtClose closes the cursor and leaves the caller's transaction.
	stmtClose
	// stmtRollback ends jsonstream's own transaction: COMMIT when the
	// result was received whole (a complete stream's transaction is
	// committed, as a single statement would have been), ROLLBACK
	// otherwise.
	stmtRollback
)

// endPlan is how a stream ends.
type endPlan struct {
	read endRead
	stmt endStmt
	// stmtBound bounds the end statement's round trip, past which the
	// connection is cut; 0 when it is not bounded.
	stmtBound time.Duration
	cursor    bool
	portal    bool
	// finish runs a portal's statement to its end before Sync, as lib/pq's
	// Close reads a result to its end: the CloseDrain of a portal stream.
	finish bool
	// lockRest runs the rest of a locking read in the caller's transaction
	// before its end, so that it locks every row lib/pq's drain would
	// have locked: a portal finishes, a cursor moves past its last row.
	lockRest bool
	// writeRest reads on the result of a failed statement that writes,
	// outside the caller's transaction, up to writeRestBytes: a rest
	// within it is read and the statement commits, a longer one is rolled
	// back (see planEnd).
	writeRest bool
}

// writeRestBytes is the most of a failed write's result that its end
// reads to commit it (planEnd): about what the socket's buffers hold, in
// which lib/pq's server has sent a result whole before a cancel request
// can reach it.
const writeRestBytes = 1 << 20

// planEnd decides how a stream ends, given the facts and its drain
// timeout.
func planEnd(f endFacts, drainTimeout time.Duration) endPlan {
	p := endPlan{cursor: f.cursor, portal: f.portal}
	mode := f.closeMode
	// A locking read closed early in the caller's transaction: lib/pq's
	// drain ran it whole, and the transaction holds every row's lock. A
	// failure (Cancel, pause timeout, context) stops it instead, as
	// lib/pq's cancel request stops the statement.
	p.lockRest = f.callersTx && f.locks && !f.failed && (f.portal || f.cursor)
	p.finish = f.portal && (mode == CloseDrain || p.lockRest) && !f.failed
	switch {
	case f.callersTx, f.writes:
		// A cut would end the caller's transaction, or could undo what
		// the statement wrote: whatever the close mode, read it all.
		mode = CloseDrain
	case f.failed:
		// A failed stream ends promptly, whatever the close mode.
		mode = CloseAuto
	}
	switch {
	case !f.canCut || mode == CloseDrain:
		p.read = readToEnd
	case mode == CloseCut:
		p.read = readLook
	default:
		p.read = readBounded
	}
	if !f.cursor && !f.portal {
		return p
	}
	// A portal whose statement writes has run it whole at its first
	// Execute: an early Close commits it by closing the portal, as lib/pq's
	// drain would. A failure (Cancel, pause timeout, context) meets lib/pq's
	// cancel request: the server rolls the statement back while it still
	// has its result to send, which through lib/pq is while the rest does
	// not fit in the socket's buffers; once it sent it all, the statement
	// committed. The end reads on up to writeRestBytes: a rest that ends
	// within them commits, a longer one is rolled back.
	if f.callersTx || f.portal && f.writes && !f.failed {
		p.stmt = stmtClose
	} else {
		p.stmt = stmtRollback
		p.writeRest = f.portal && f.writes && f.failed
	}
	if f.canCut && p.read == readBounded {
		// The end statement is one round trip, which a network slower
		// than the drain timeout may well take: it gets a bound of its
		// own, there only for a connection that stopped answering. A
		// failed stream ends sooner (the consumer's Close waits for it).
		p.stmtBound = max(cursorEndTimeout, drainTimeout)
		if f.failed {
			p.stmtBound = max(failedEndTimeout, drainTimeout)
		}
	}
	return p
}

// outcome is the Outcome of a Close that carried out p: whole is set when
// nothing of the result was left unread (the stream is then Complete),
// cut when the connection was cut, and ctxErr is the error of the query's
// context (or its transaction's) when it had ended, which is then why the
// stream was closed: database/sql closes the rows itself when the context
// ends, often before jsonstream's own watch fails the stream.
func (p endPlan) outcome(whole, cut bool, ctxErr error) Outcome {
	switch {
	case whole:
		return OutcomeComplete
	case ctxErr != nil:
		return OutcomeContext
	case cut:
		return OutcomeCut
	case p.cursor:
		return OutcomeCursorClosed
	case p.portal && !p.finish:
		return OutcomePortalClosed
	}
	return OutcomeDrained
}
