package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

// ErrCursorQuery is wrapped by the error of a valid query that cursor
// mode (WithFetchSize) cannot run, and nothing of it runs: DECLARE …
// CURSOR takes a single SELECT, VALUES, TABLE or WITH query, not several
// statements, INSERT … RETURNING, SHOW, or a WITH that changes data. When
// the server refused it, its error is wrapped too, for errors.As. A query
// with a syntax error gets the server's error, as from lib/pq.
var ErrCursorQuery = errors.New("jsonstream: cursor mode cannot run this query")

// FetchAuto's batches: the first is small, so that an early close after a
// few rows (a QueryRow) reads off almost nothing; each next one doubles,
// up to autoMaxRows rows and about autoBatchBytes bytes, so that reading
// off the rest of one batch stays well under a millisecond on loopback
// (lib/pq reads about 300 KB per millisecond) while the round trips stay
// few on a long stream.
const (
	autoFirstRows  = 16
	autoMaxRows    = 8192
	autoBatchBytes = 256 << 10
)

// sqlStater is the SQLSTATE of a server error: *pq.Error has it, and so
// does pgx's *pgconn.PgError.
type sqlStater interface{ SQLState() string }

func sqlState(err error) string {
	var s sqlStater
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// cursor is the driver.Rows of a cursor-backed stream: it runs the query
// as DECLARE … NO SCROLL CURSOR and FETCHes it in batches. The rows that
// wrap it keep the stream's state; cursor only fetches and ends the
// cursor. Next and close run on the consumer's goroutine, as database/sql
// calls them; interrupt may come from any goroutine.
type cursor struct {
	columnTypes // of first
	conn        *conn
	r           *rows
	name        string
	// own is set when jsonstream began the transaction the cursor lives
	// in, and so ends it; otherwise the cursor lives in the caller's
	// transaction, which jsonstream never ends.
	own bool
	// size is the fixed batch size; 0 under FetchAuto, where next grows.
	size, next int
	// batch is the current FETCH's rows, nil between batches; asked and
	// got are its requested and received row counts.
	batch      driver.Rows
	asked, got int
	// first is the first batch's rows, kept for the column types.
	first driver.Rows
	// wire is held by whoever talks to the server through the
	// connection once the rows exist: the consumer's Next and Close, or a
	// failure (Cancel, pause timeout, context) that ends the cursor from
	// its own goroutine while the consumer is away (release). The fields
	// above and ended are the holder's.
	wire sync.Mutex
	// mu orders the consumer's round trips against a failure from
	// another goroutine (interrupt): the failure either finds a reply
	// pending and bounds its read, or finds none and leaves the socket
	// alone, never arming a deadline after the consumer moved on.
	mu sync.Mutex
	// inFlight is set, under mu, while a reply (a FETCH's batch, a COMMIT,
	// CLOSE or ROLLBACK) is not fully read.
	inFlight bool
	// bounded is set, under mu, when a failure bounded a reply's read
	// (interrupt), and cleared by the cursor's own end: only then may a
	// Close of an ended cursor clear the deadline, which a later stream
	// or an owed end's Sync may otherwise be using.
	bounded bool
	// aborted is set when a server error failed the transaction: the
	// cursor is gone with it.
	aborted bool
	// ended is set once the cursor was closed (and jsonstream's
	// transaction ended), or can no longer be.
	ended bool
	// whole is set when Close found nothing of the result left unread:
	// the batch in flight was the last and had no row left (QueryRow).
	whole bool
}

// queryCursor runs query in cursor mode: it begins a transaction unless
// the connection is in one, declares the cursor and fetches the first
// batch. The Stream st is claimed before anything is sent; a query the
// server refused before it started leaves it, and fires no event.
func (c *conn) queryCursor(ctx context.Context, query string, args []driver.NamedValue, st *Stream, r *rows, start instant) (driver.Rows, error) {
	set := &r.settings
	execer, okE := c.inner.(driver.ExecerContext)
	queryer, okQ := c.inner.(driver.QueryerContext)
	if !okE || !okQ {
		return nil, fmt.Errorf("%w: WithFetchSize(%s): cursor mode needs an inner connection with driver.ExecerContext and driver.QueryerContext, %T has not",
			ErrInvalidOption, fetchSizeString(set.fetchSize), c.inner)
	}
	preparer, _ := c.inner.(driver.ConnPrepareContext) // nil: only texts the scan is sure of
	text := scanQuery(query)
	if err := c.refuseCursor(ctx, preparer, query, text, set.fetchSize); err != nil {
		return nil, err
	}
	if err := claim(st); err != nil {
		return nil, err
	}
	own := false
	if !c.inTx {
		inBlock, err := c.inTransactionBlock(ctx, execer)
		if err != nil {
			unclaim(st)
			return nil, err
		}
		own = !inBlock
	}
	c.cursorSeq++
	cur := &cursor{
		conn: c,
		r:    r,
		name: "jsonstream_cursor_" + strconv.FormatUint(c.cursorSeq, 10),
		own:  own,
		size: set.fetchSize,
		next: set.fetchSize,
	}
	if cur.size == FetchAuto {
		cur.size, cur.next = 0, autoFirstRows
	}
	// The simple protocol runs every statement of a string, so it may
	// carry the DECLARE only when the scan is certain that the query is
	// one statement whose parentheses close where the server's do. Any
	// other text goes in a Parse message, which the server refuses when
	// it holds a second statement: nothing runs. It goes whole: where
	// the scan is not sure, its end of the first statement is a guess,
	// and a text cut there would run without what follows.
	simple := text.certain && !text.malformed
	body := query
	if simple {
		body = query[:text.end]
	}
	declare, offset := declareCursor(cur.name, body)
	var err error
	c.txIdle = false
	switch {
	case own && len(args) == 0 && simple:
		// One round trip for both.
		_, err = execer.ExecContext(ctx, "BEGIN; "+declare, nil)
		offset += len("BEGIN; ")
	case own:
		if _, err = execer.ExecContext(ctx, "BEGIN", nil); err == nil {
			err = c.declare(ctx, execer, preparer, declare, args, simple)
		}
	default:
		err = c.declare(ctx, execer, preparer, declare, args, simple)
	}
	if err != nil {
		cur.abandon(false)
		unclaim(st)
		if own && sqlState(err) == "42601" && preparer != nil && !c.isCut() {
			return nil, reparse(ctx, preparer, query, cursorError(err, set.fetchSize, offset), set.fetchSize)
		}
		return nil, cursorError(err, set.fetchSize, offset)
	}
	cur.batch, err = cur.firstFetch(ctx, queryer)
	if err != nil {
		// The first batch failed before it sent a row: as a single
		// statement that fails on its first row, whose error lib/pq
		// returns from Query, the query fails; it fires no event and
		// leaves its Stream.
		cur.abandon(true)
		unclaim(st)
		return nil, err
	}
	cur.first = cur.batch
	cur.columnTypes = columnTypes{cur.first}
	c.cursorOpen.Store(true)
	return c.bindRows(ctx, cur, st, r, start, cur, query), nil
}

// declare sends the DECLARE statement: with arguments, or when simple is
// false, in the extended protocol, which takes a single statement.
func (c *conn) declare(ctx context.Context, execer driver.ExecerContext, preparer driver.ConnPrepareContext, declare string, args []driver.NamedValue, simple bool) error {
	if simple || len(args) > 0 {
		_, err := execer.ExecContext(ctx, declare, args)
		return err
	}
	if preparer == nil {
		return errNoPrepare
	}
	si, err := preparer.PrepareContext(ctx, declare)
	if err != nil {
		return err
	}
	defer func() { _ = si.Close() }() // a Close error after the DECLARE ran changes nothing
	se, ok := si.(driver.StmtExecContext)
	if !ok {
		return fmt.Errorf("%w: cursor mode needs statements with driver.StmtExecContext, %T has not", ErrInvalidOption, si)
	}
	_, err = se.ExecContext(ctx, nil)
	return err
}

// refuseCursor returns the error of a query that cursor mode cannot run,
// before anything of it runs: several statements, or one that DECLARE
// does not take. A query the scan finds malformed, or that is not a
// query DECLARE takes, is first parsed by the server on its own (a Parse
// message runs nothing), so that a syntax error is the server's own, as
// lib/pq reports it.
func (c *conn) refuseCursor(ctx context.Context, preparer driver.ConnPrepareContext, query string, text queryText, fetchSize int) error {
	if !text.certain {
		return nil // the extended protocol decides
	}
	if !text.malformed && text.statements > 1 {
		return cursorQueryError(fetchSize, "the query holds several statements")
	}
	if !text.malformed && text.declarable() {
		return nil
	}
	if preparer == nil {
		return cursorQueryError(fetchSize, "a "+strings.ToUpper(text.first)+" statement, or a malformed one, is not a query DECLARE takes")
	}
	si, err := preparer.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	_ = si.Close()
	if text.malformed {
		return nil // the server took it after all: the extended protocol decides
	}
	return cursorQueryError(fetchSize, "a "+strings.ToUpper(text.first)+" statement is not a query DECLARE takes")
}

// errNoPrepare is the error of a query whose text only the extended
// protocol can carry safely, on an inner connection without
// driver.ConnPrepareContext.
var errNoPrepare = fmt.Errorf("%w: its text can go to the server only in a Parse message (the scan cannot be sure where its statement ends), and the inner connection has no driver.ConnPrepareContext", ErrCursorQuery)

// reparse returns the error of a query whose DECLARE had a syntax error,
// declareErr, once its transaction is rolled back: the server's own error
// for the query alone (a Parse message runs nothing), as lib/pq reports
// it; or, when the server takes the query alone (SELECT … INTO), one
// wrapping ErrCursorQuery and declareErr.
func reparse(ctx context.Context, preparer driver.ConnPrepareContext, query string, declareErr error, fetchSize int) error {
	si, err := preparer.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	_ = si.Close()
	return fmt.Errorf("%w (WithFetchSize(%s) runs it as DECLARE … CURSOR FOR; give this query WithFetchSize(0)): %w",
		ErrCursorQuery, fetchSizeString(fetchSize), declareErr)
}

func cursorQueryError(fetchSize int, why string) error {
	return fmt.Errorf("%w (WithFetchSize(%s) runs it as DECLARE … CURSOR FOR, which takes one SELECT, VALUES, TABLE or WITH query; give this query WithFetchSize(0)): %s",
		ErrCursorQuery, fetchSizeString(fetchSize), why)
}

// inTransactionBlock reports whether the session is inside a transaction
// block that jsonstream did not see begin (Exec("BEGIN")). The last
// ReadyForQuery says so when the framer follows the connection
// (frame.go). Otherwise it asks the server, and only when the connection
// has run statements of its own since it was last known to be outside one: SAVEPOINT fails with SQLSTATE 25P01
// (no_active_sql_transaction) exactly outside a transaction block, and
// its RELEASE leaves no trace inside one.
func (c *conn) inTransactionBlock(ctx context.Context, execer driver.ExecerContext) (bool, error) {
	if c.sock != nil {
		if in, known := c.sock.frames.txBlock(); known {
			return in, nil
		}
	}
	if c.txIdle && !c.unwrapped {
		return false, nil
	}
	_, err := execer.ExecContext(ctx, "SAVEPOINT jsonstream_probe; RELEASE SAVEPOINT jsonstream_probe", nil)
	switch {
	case err == nil:
		return true, nil
	case sqlState(err) == "25P01":
		return false, nil
	}
	return false, err
}

// declareCursor returns the DECLARE statement for query and the offset of
// query in it.
func declareCursor(name, query string) (string, int) {
	// A trailing semicolon would close the parentheses' statement early.
	query = strings.TrimRight(query, " \t\r\n;")
	prefix := "DECLARE " + name + " NO SCROLL CURSOR FOR (\n"
	// The newline before ")" keeps a trailing -- comment from hiding it.
	return prefix + query + "\n)", len(prefix)
}

// cursorError points a DECLARE's server error into the caller's query
// instead of jsonstream's DECLARE around it, and makes one the server
// gives for a valid query that DECLARE does not take (a data-modifying
// WITH) wrap ErrCursorQuery too.
func cursorError(err error, fetchSize, offset int) error {
	err = shiftPosition(err, offset)
	if sqlState(err) == "0A000" { // feature_not_supported
		return fmt.Errorf("%w (WithFetchSize(%s) runs it as DECLARE … CURSOR FOR; give this query WithFetchSize(0)): %w",
			ErrCursorQuery, fetchSizeString(fetchSize), err)
	}
	return err
}

// shiftPosition returns a *pq.Error whose Position counts in the caller's
// query rather than in the statement jsonstream sent; any other error as
// it is.
func shiftPosition(err error, offset int) error {
	pe, ok := err.(*pq.Error) //nolint:errorlint // lib/pq returns it unwrapped; a wrapped one is left alone
	if !ok || pe.Position == "" {
		return err
	}
	p, convErr := strconv.Atoi(pe.Position)
	if convErr != nil || p <= offset {
		return err
	}
	shifted := *pe
	shifted.Position = strconv.Itoa(p - offset)
	return &shifted
}

func fetchSizeString(n int) string {
	if n == FetchAuto {
		return "FetchAuto"
	}
	return strconv.Itoa(n)
}

// pending marks whether a reply is being read; see mu.
func (cur *cursor) pending(on bool) {
	cur.mu.Lock()
	cur.inFlight = on
	cur.mu.Unlock()
}

// noteError records what err, from a statement of the cursor's, means
// for the transaction: a server error failed it; an error of the client
// (a value lib/pq cannot decode) did not.
func (cur *cursor) noteError(err error) {
	if sqlState(err) != "" {
		cur.aborted = true
	}
}

// fetch sends the next FETCH, its reply already marked pending, and
// returns its rows.
func (cur *cursor) fetch(ctx context.Context, queryer driver.QueryerContext) (driver.Rows, error) {
	cur.asked, cur.got = cur.next, 0
	rows, err := queryer.QueryContext(ctx, "FETCH FORWARD "+strconv.Itoa(cur.asked)+" FROM "+cur.name, nil)
	if err != nil {
		cur.pending(false)
		cur.noteError(err)
		return nil, err
	}
	return rows, nil
}

// firstFetch sends the first FETCH. The query's context is not handed to
// lib/pq when jsonstream dialed the connection: lib/pq would watch it for
// as long as the first batch is open, and when it ends send a cancel
// request and give up the connection. A context that ends while the
// first batch is on its way bounds the read instead, as a failure does
// later (interrupt).
func (cur *cursor) firstFetch(ctx context.Context, queryer driver.QueryerContext) (driver.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cur.pending(true)
	if cur.conn.sock == nil || ctx.Done() == nil {
		return cur.fetch(ctx, queryer)
	}
	// fired is closed when the watch has done its work, so that the
	// watch never arms the socket after this returned.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		cur.interrupt()
		close(fired)
	})
	rows, err := cur.fetch(context.Background(), queryer)
	if !stop() {
		<-fired
		if err != nil {
			cur.conn.cut()
			return nil, ctx.Err()
		}
	}
	return rows, err
}

// grow sets the size of the next batch under FetchAuto.
func (cur *cursor) grow() {
	if cur.size != 0 {
		return
	}
	n := min(cur.next*2, autoMaxRows)
	if rows := cur.r.rowCount.Load(); rows > 0 {
		if perRow := cur.r.byteCount.Load() / rows; perRow > 0 {
			n = min(n, max(autoFirstRows, int(autoBatchBytes/perRow)))
		}
	}
	cur.next = n
}

// Columns implements driver.Rows.
func (cur *cursor) Columns() []string { return cur.first.Columns() }

// Next implements driver.Rows: the next row of the current batch, or of a
// new batch when the current one ended full. A short batch is the end:
// the cursor is closed (its transaction committed) before io.EOF returns,
// so the connection is clean when the caller learns that the stream is
// complete.
func (cur *cursor) Next(dest []driver.Value) error {
	cur.wire.Lock()
	defer cur.wire.Unlock()
	return cur.nextRow(dest)
}

// nextRow is Next with the wire held.
func (cur *cursor) nextRow(dest []driver.Value) error {
	r := cur.r
	for {
		if cur.batch != nil {
			err := cur.batch.Next(dest)
			if err == nil {
				cur.got++
				return nil
			}
			cur.pending(false)
			_ = cur.batch.Close() // read to the end, or failed: nothing left to read
			cur.batch = nil
			if err != io.EOF { //nolint:errorlint // drivers return io.EOF itself
				cur.noteError(err)
				return sessionError(err, cur.conn)
			}
			if cur.got < cur.asked {
				return cur.finish()
			}
		}
		if cur.ended {
			if r.state.load() == Failed {
				return r.err() // a failure ended the cursor (release)
			}
			return io.EOF
		}
		// Between batches: a Pause that came meanwhile holds the next
		// FETCH, and a failure or an ended context stops it. The wire is
		// free meanwhile, so that a failure can end the cursor at once.
		cur.wire.Unlock()
		err := r.await()
		cur.wire.Lock()
		if err != nil {
			return err
		}
		if err := r.ctx.Err(); err != nil {
			return err
		}
		if r.txCtx != nil {
			if err := r.txCtx.Err(); err != nil {
				return err
			}
		}
		if cur.ended {
			continue
		}
		if s := cur.conn.sock; s != nil {
			if pe := s.peekFatal(); pe != nil {
				// The server ended the session between batches.
				cur.conn.discard()
				cur.end()
				return &SessionEndedError{Server: pe}
			}
		}
		cur.grow()
		// Pending before the state check, as failState changes the state
		// before it interrupts: either the failure sees the FETCH pending
		// and bounds its read, or this sees the failure. A Pause that came
		// since await is waited out as well.
		cur.pending(true)
		if r.state.load() != Running {
			cur.pending(false)
			continue
		}
		// The context is watched by the stream itself; lib/pq's own watch
		// would cost a goroutine per batch and send a cancel request.
		batch, err := cur.fetch(context.Background(), cur.conn.inner.(driver.QueryerContext))
		if err != nil {
			return sessionError(err, cur.conn)
		}
		cur.batch = batch
	}
}

// release ends the cursor of a stream that just failed (Cancel, the pause
// timeout, the context), from the failure's goroutine, so that the server
// frees the session's snapshot and locks at once rather than when the
// consumer next calls Next or Close. When the consumer is on the wire, it
// is inside Next or Close: its read is bounded (interrupt), its Next
// fails and database/sql closes the rows, which ends the cursor.
//
// In the caller's transaction a batch in flight is left to the consumer's
// Close too: reading it off may take as long as the server does, and a
// cut would end that transaction.
func (cur *cursor) release() {
	if cur.wire.TryLock() {
		cur.releaseLocked(false)
	}
}

// endNow is release for a caller that must find the end over when it
// returns (endForTx): it waits for an end that another goroutine is
// carrying out, and reads off a batch in flight in the caller's
// transaction, which that transaction's end cannot wait for otherwise.
func (cur *cursor) endNow() {
	cur.wire.Lock()
	cur.releaseLocked(true)
}

// releaseLocked is release with cur.wire held, which it unlocks; inFlight
// ends the cursor though a batch is in flight in the caller's transaction.
func (cur *cursor) releaseLocked(inFlight bool) {
	defer cur.wire.Unlock()
	if cur.ended || !inFlight && !cur.own && cur.batch != nil {
		// Ended already: by the consumer's Close, which may have handed
		// the connection to another query meanwhile; not a thing of this
		// stream's may touch it.
		return
	}
	// No statement may start on the connection meanwhile (usable).
	cur.conn.releasing.Store(true)
	defer cur.conn.releasing.Store(false)
	_ = cur.close(nil) // the consumer's values are not this goroutine's
}

// endStatement is what ends the cursor: COMMIT or ROLLBACK of
// jsonstream's own transaction (which closes the cursor), CLOSE inside
// the caller's.
func (cur *cursor) endStatement(commit bool) string {
	switch {
	case !cur.own:
		return "CLOSE " + cur.name
	case commit:
		return "COMMIT"
	}
	return "ROLLBACK"
}

// end marks the cursor ended: the connection takes statements again
// (usable).
func (cur *cursor) end() {
	cur.ended = true
	cur.conn.cursorOpen.Store(false)
}

// finish ends a cursor that returned its last row, from Next: the stream
// is complete once the end statement succeeded. A failure meanwhile
// bounds its reply like a batch's.
func (cur *cursor) finish() error {
	cur.end()
	c := cur.conn
	if !c.clearDeadline() { // a failure's bound on the last batch
		return driver.ErrBadConn
	}
	cur.pending(true)
	err := cur.exec(cur.endStatement(true))
	cur.pending(false)
	if err != nil || !c.clearDeadline() {
		c.discard() // the session is in an unknown state: never reuse it
		if err == nil {
			err = driver.ErrBadConn
		}
		return err
	}
	c.txIdle = cur.own
	return io.EOF
}

// abandon ends a cursor whose start failed: jsonstream's own transaction
// is rolled back; in the caller's, a declared cursor is closed unless a
// server error failed the transaction, and the cursor with it.
func (cur *cursor) abandon(declared bool) {
	cur.end()
	if !cur.own && (!declared || cur.aborted) {
		return
	}
	if cur.exec(cur.endStatement(false)) != nil {
		cur.conn.discard() // the session is in an unknown state: never reuse it
		return
	}
	cur.conn.txIdle = cur.own
}

func (cur *cursor) exec(stmt string) error {
	_, err := cur.conn.inner.(driver.ExecerContext).ExecContext(context.Background(), stmt, nil)
	return err
}

// interrupt is how a failure (Cancel, pause timeout, context) stops a
// cursor-backed stream, from any goroutine. Between round trips the
// server is idle and nothing needs stopping: the consumer's Close closes
// the cursor. With a reply pending, the reader gets the drain timeout to
// finish it before its read fails and the connection is cut.
func (cur *cursor) interrupt() {
	cur.mu.Lock()
	defer cur.mu.Unlock()
	if cur.inFlight && cur.conn.sock != nil {
		cur.bounded = true
		cur.conn.sock.interrupt(cur.r.settings.drainTimeout)
	}
}

// close ends the cursor when the stream is closed or fails, with the wire
// held, carrying out the plan of planEnd (end.go): it reads off the batch
// in flight, then closes the cursor or ends jsonstream's own transaction,
// and the connection stays in the pool with its session. When that batch
// turns out to be the last (a QueryRow, a small result) the stream was
// complete after all and its transaction is committed, as the
// single-statement mode's drain lets the statement finish. A connection
// that does not answer within the plan's bounds is cut. dest is the
// consumer's row slice, reused to read off the batch; nil when the caller
// is not the consumer.
func (cur *cursor) close(dest []driver.Value) error {
	c := cur.conn
	cur.mu.Lock()
	bounded := cur.bounded
	cur.bounded = false
	cur.mu.Unlock()
	if cur.ended {
		if bounded {
			c.clearDeadline() // a failure's bound on the last round trip
		}
		return nil
	}
	cur.end()
	failed := cur.r.state.load() == Failed
	plan := planEnd(cur.r.endFacts(failed), cur.r.settings.drainTimeout)
	if plan.read == readLook && cur.batch != nil && !cur.endsHere(dest) {
		c.cut()
		_ = cur.batch.Close()
		return nil
	}
	var deadline time.Time
	if plan.read == readBounded {
		deadline = time.Now().Add(cur.r.settings.drainTimeout)
	}
	// A fresh window: a failure's bound may have run out while nobody read.
	if s := c.sock; s != nil && !s.beginDrain(deadline) {
		c.cut()
		return nil
	}
	own := plan.stmt == stmtRollback
	commit := cur.whole && own && !failed
	var drainErr error
	if cur.batch != nil {
		// Whether the batch was the last matters only for a transaction
		// of jsonstream's that a complete stream commits.
		cut, last, err := cur.drainBatch(dest, own && !failed)
		if cut {
			return nil
		}
		commit, drainErr = last && err == nil && !cur.aborted, err
	}
	if cur.aborted && !own {
		c.clearDeadline()
		return drainErr // the caller's transaction failed: the cursor went with it
	}
	if s := c.sock; s != nil && plan.stmtBound > 0 && !s.beginDrain(time.Now().Add(plan.stmtBound)) {
		c.cut()
		return drainErr
	}
	end := cur.endStatement(commit)
	if plan.lockRest {
		// The rest of the rows, locked and not sent.
		end = "MOVE FORWARD ALL IN " + cur.name + "; " + end
	}
	err := cur.exec(end)
	if err != nil && isTimeout(err) {
		c.cut() // the connection stopped answering: as a cut stream, nothing to report
		return drainErr
	}
	if err != nil || !c.clearDeadline() {
		c.discard() // the session is in an unknown state: never reuse it
		if drainErr != nil || failed {
			return drainErr
		}
		return err
	}
	c.txIdle = cur.own
	return drainErr
}

// endsHere reports whether the batch in flight is the cursor's last and
// has no row left, looking only at what has arrived (Close under
// CloseCut waits for the network no longer than drainGrace): then it
// reads the batch off and notes that the result was received whole.
// Otherwise the batch is left as it is, or half read: the caller cuts.
func (cur *cursor) endsHere(dest []driver.Value) bool {
	s := cur.conn.sock
	if s == nil || cur.got >= cur.asked || !s.beginDrain(time.Now()) {
		return false
	}
	if dest == nil {
		dest = make([]driver.Value, len(cur.batch.Columns()))
	}
	if cur.batch.Next(dest) != io.EOF || !s.endDrain() { //nolint:errorlint // drivers return io.EOF itself
		return false
	}
	_ = cur.batch.Close()
	cur.batch = nil
	cur.pending(false)
	cur.whole = true
	return true
}

// cursorEndTimeout bounds the statement that ends a cursor on Close when
// the drain is bounded: long enough for any working network, short enough
// that Close on a dead one returns.
const cursorEndTimeout = time.Second

// failedEndTimeout bounds the statement that ends the cursor of a failed
// stream (Cancel, the pause timeout, the context): the server answers a
// ROLLBACK in well under a millisecond, but a loaded client or server may
// be descheduled for tens of milliseconds, and a cut then would cost a
// connection for nothing.
const failedEndTimeout = 250 * time.Millisecond

// drainBatch reads off the rest of the batch in flight under the drain
// window close set. It reports whether it cut the connection instead, and
// when count is set whether the batch was the cursor's last; without
// count the rows are skipped, not decoded.
func (cur *cursor) drainBatch(dest []driver.Value, count bool) (cut, last bool, err error) {
	batch, c := cur.batch, cur.conn
	cur.batch = nil
	if dest == nil {
		dest = make([]driver.Value, len(batch.Columns()))
	}
	// The first row left, if any, tells a result received whole.
	err = batch.Next(dest)
	cur.whole = err == io.EOF && cur.got < cur.asked //nolint:errorlint // drivers return io.EOF itself
	if err == nil {
		cur.got++
		if count {
			for err == nil {
				if err = batch.Next(dest); err == nil {
					cur.got++
				}
			}
		} else if err = batch.Close(); err == nil {
			err = io.EOF
		}
	}
	_ = batch.Close()
	cur.pending(false)
	switch {
	case err == io.EOF: //nolint:errorlint // drivers return io.EOF itself
		return false, count && cur.got < cur.asked, nil
	case isTimeout(err):
		cur.whole = false
		c.cut()
		return true, false, nil
	}
	cur.whole = false
	cur.noteError(err)
	return false, false, err
}

// Close implements driver.Rows: it ends the cursor (close) with the wire
// held.
func (cur *cursor) Close() error {
	cur.wire.Lock()
	defer cur.wire.Unlock()
	return cur.close(cur.r.dest)
}
