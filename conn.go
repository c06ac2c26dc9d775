package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// conn wraps one connection of the inner driver. database/sql uses a conn
// from one goroutine at a time; only cut may come from others (a
// Controller, a context watch), so the cut flag is atomic.
type conn struct {
	inner    driver.Conn
	settings *settings
	// sock is the network connection under inner, when jsonstream's dialer
	// made it; nil otherwise. Closing it is how a query is stopped early.
	sock *sock
	// cutDone is set once sock was closed; the conn is then bad.
	cutDone atomic.Bool

	// arg is the Stream argument of the statement whose arguments
	// database/sql is checking.
	arg streamArg
	// inTx is set while a transaction begun through database/sql is open:
	// Close then drains instead of cutting, which would end the
	// transaction. txCtx is that transaction's context.
	inTx  bool
	txCtx context.Context
	// txIdle is set while the session is known to be outside any
	// transaction block: freshly connected, or jsonstream ended its own
	// transaction and nothing else ran since. A cursor-backed stream then
	// need not ask the server (inTransactionBlock).
	txIdle bool
	// unwrapped is set once the inner conn or a statement of it was
	// handed out (sql.Conn.Raw, Unwrap): statements may run that
	// jsonstream does not see, so txIdle is no longer trusted.
	unwrapped bool
	// cursorSeq numbers the cursors of the session.
	cursorSeq uint64
	// wireOK is set when portal streams can run on the connection: a
	// lib/pq connection on a socket of jsonstream's dialer, from settings
	// jsonstream read; binaryParams is lib/pq's binary_parameters, and
	// textResults its disable_prepared_binary_result. wire is the portal
	// streams' reader and writer, made by the first.
	wireOK, binaryParams, textResults bool
	// connector made the conn; a resumable stream opens another through it
	// (resume.go). sessionSet is set once a statement of the conn's began
	// with SET, RESET or DISCARD: a new session would not have what it set.
	connector  *Connector
	sessionSet bool
	wire       *wire
	// spare is the portal of the last portal stream, kept for the next
	// when nothing else can reach it (recycle.go).
	spare *portal
	// desc is the last RowDescription a portal stream read, when small,
	// and descFields its fields (portal.describe).
	desc       []byte
	descFields []pgField
	// linkRTT is the shortest round trip of a Sync that ended a portal
	// stream read whole, in nanoseconds; 0 until one did (portalSlowRTT).
	// Such a Sync has the server commit and answer, nothing more: its
	// round trip is the link's, with as little of the machine's load as
	// any saw. Written by whoever reads that ReadyForQuery, which may be a
	// failure's goroutine.
	linkRTT atomic.Int64
	// syncs counts the Syncs that ended portal streams read whole, to
	// sample linkRTT at some of them (portal.finish).
	syncs atomic.Int64
	// portalOpen is set while a portal stream holds the wire: from its
	// first message to its last ReadyForQuery. lib/pq, which does not see
	// it, would otherwise send a statement in the middle of it.
	portalOpen atomic.Bool
	// releasing is set while a failure's goroutine ends the server's side
	// of a stream whose rows are still open (rows.release): the end runs
	// outside database/sql's lock of the conn, and a statement sent
	// meanwhile would share the connection with it.
	releasing atomic.Bool
	// cursorOpen is set while a cursor-backed stream's cursor is open:
	// from its first batch until it is ended. Its batches are lib/pq's
	// rows, whose replies lib/pq may have read ahead of its consumer: a
	// portal stream started meanwhile would not see that the connection
	// is busy.
	cursorOpen atomic.Bool
	// singleOpen is set while a single-statement stream's rows are open
	// on a connection whose wire jsonstream owns: lib/pq's rows, whose
	// replies lib/pq may have read whole, so that the framer sees the
	// connection idle, and into which lib/pq sends a Prepare or a Ping.
	// Nothing starts meanwhile (busy).
	singleOpen bool
	// open is the stream whose rows are open on the conn, nil once they
	// are closed (endForTx).
	open *rows
	// closeLater holds the statements whose Close came while a stream
	// held the wire (stmt.Close): the next statement closes them first.
	closeLater []driver.Stmt
	// locTZ is the TimeZone value loc was made for (portal.location): the
	// consumer of the conn's portal stream keeps them.
	locTZ *string
	loc   *time.Location
	// scannedText is the last text chooseMode scanned, and scanned its
	// scan (scan): a service sends the same few texts again and again.
	scannedText string
	scanned     queryText
	// pooledAt is when database/sql last put the conn back in its pool
	// (IsValid), at the latest; zero before. ResetSession looks at the
	// socket only when the conn rested there at least peekAfterIdle
	// (idlepeek.go).
	pooledAt instant
	// usedAt is the conn's last clock reading in its current use: the one
	// ResetSession took as database/sql took the conn from its pool, or
	// its last query's start (queryStart).
	usedAt instant
}

// streamArg holds a Stream taken out of a statement's arguments until the
// query that follows takes it. database/sql checks every argument, then
// runs the statement; when a check fails, nothing runs, so the next
// statement must not find the Stream of the failed one.
type streamArg struct {
	pending *Stream
	// owner is the conn or stmt whose checker took the Stream; only its
	// own query may take it.
	owner any
	// removed is the slot of the Stream just removed: database/sql checks
	// the next argument of the same statement in the same slot, while a
	// new statement's first argument (also ordinal 1) is in a new slice.
	// Holding the pointer keeps that slice, so the address cannot recur.
	removed *driver.NamedValue
	// kept counts the statement's arguments checked and kept: a query
	// whose argument count differs is another statement.
	kept int
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

func newConn(inner driver.Conn, s *settings, sk *sock) *conn {
	// A new session is outside any transaction block.
	return &conn{inner: inner, settings: s, sock: sk, txIdle: true}
}

// Unwrap returns the inner driver's connection, for sql.Conn.Raw.
func (c *conn) Unwrap() driver.Conn {
	c.unwrapped = true
	// Whoever has lib/pq's connection may use it without a claim.
	c.sock.settleNow()
	return c.inner
}

// ran notes that a statement jsonstream does not follow ran on the
// session: whether it is in a transaction block is unknown from now on.
func (c *conn) ran() { c.txIdle = false }

// cut closes the network connection, which ends whatever the server was
// sending and makes the server stop the query. It reports whether the
// connection could be cut; safe from any goroutine.
func (c *conn) cut() bool {
	if c.sock == nil {
		return false
	}
	if c.cutDone.CompareAndSwap(false, true) {
		_ = c.sock.cut()
	}
	return true
}

func (c *conn) isCut() bool { return c.cutDone.Load() }

// ErrConnCut is the error of anything run on a connection that jsonstream
// cut to end a stream: an early Close that the close mode let cut it,
// Cancel, the pause timeout, the query's context, or a session left in a
// state jsonstream could not know. It wraps driver.ErrBadConn, so
// database/sql discards the connection. A *sql.DB never hands out such a
// connection again; code that holds one (sql.Conn) meets this error on
// its next statement and must take a new connection. See CloseMode.
var ErrConnCut = fmt.Errorf("jsonstream: the connection was cut to end a stream (early Close, Cancel, pause timeout or context) and serves nothing more: %w", driver.ErrBadConn)

// errQueryInProgress is lib/pq's error for a statement sent while a
// query's rows are open on the connection.
var errQueryInProgress = errors.New("pq: there is already a query being processed on this connection")

// usable returns ErrConnCut once the connection was cut, and lib/pq's
// error for a statement sent while a stream holds the connection (busy),
// where lib/pq would return it for one of its own queries. It claims the
// connection from an owed end's Sync timer (owed.go); its callers rearm
// the timer as they return, for a call that wrote nothing.
func (c *conn) usable() error {
	c.sock.claim()
	if c.isCut() {
		return ErrConnCut
	}
	if c.busy() {
		return errQueryInProgress
	}
	c.closeStmts()
	return nil
}

// wireHeld reports whether a stream holds the wire: a portal's exchange,
// or a failed stream's end from its own goroutine (release).
func (c *conn) wireHeld() bool {
	return c.portalOpen.Load() || c.releasing.Load()
}

// busy reports whether a stream holds the connection: the wire
// (wireHeld), an open cursor, or a single statement's open rows.
func (c *conn) busy() bool {
	return c.wireHeld() || c.cursorOpen.Load() || c.singleOpen
}

// closeStmts closes the statements whose Close waited for the wire
// (closeLater). A failure is the connection's, which the statement that
// follows meets itself.
func (c *conn) closeStmts() {
	for len(c.closeLater) > 0 {
		st := c.closeLater[0]
		c.closeLater = c.closeLater[1:]
		_ = st.Close()
	}
	c.closeLater = nil
}

// discard makes sure the connection is never reused: cut when
// jsonstream dialed it, marked bad otherwise (ResetSession and IsValid
// then report it).
func (c *conn) discard() {
	if !c.cut() {
		c.cutDone.Store(true)
	}
}

// Prepare implements driver.Conn.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext implements driver.ConnPrepareContext, falling back to
// Prepare as database/sql does.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	c.arg = streamArg{}
	defer c.leave()
	if err := c.usable(); err != nil {
		return nil, err
	}
	c.ran()
	c.noteSession(query)
	var si driver.Stmt
	var err error
	if c.sock != nil {
		c.sock.naming, c.sock.prepared = true, ""
	}
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		si, err = p.PrepareContext(ctx, query)
	} else {
		si, err = c.inner.Prepare(query)
		if err == nil && ctx.Err() != nil {
			_ = si.Close()
			return nil, ctx.Err()
		}
	}
	var name string
	if c.sock != nil {
		name = c.sock.prepared
		c.sock.naming, c.sock.prepared = false, ""
	}
	if err != nil {
		return nil, err
	}
	return newStmt(c, si, query, name), nil
}

// Close implements driver.Conn.
func (c *conn) Close() error {
	c.sock.claim()
	return c.inner.Close()
}

// Begin implements driver.Conn.
func (c *conn) Begin() (driver.Tx, error) { //nolint:staticcheck // required by driver.Conn
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx implements driver.ConnBeginTx, with database/sql's checks when
// the inner conn lacks it.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.arg = streamArg{}
	defer c.leave()
	if err := c.usable(); err != nil {
		return nil, err
	}
	var inner driver.Tx
	var err error
	if b, ok := c.inner.(driver.ConnBeginTx); ok {
		inner, err = b.BeginTx(ctx, opts)
	} else {
		switch {
		case opts.Isolation != 0:
			return nil, errors.New("sql: driver does not support non-default isolation level")
		case opts.ReadOnly:
			return nil, errors.New("sql: driver does not support read-only transactions")
		}
		inner, err = c.inner.Begin() //nolint:staticcheck
		if err == nil && ctx.Err() != nil {
			_ = inner.Rollback()
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	c.inTx, c.txCtx = true, ctx
	c.ran()
	return &tx{inner: inner, conn: c}, nil
}

// tx wraps the inner transaction so that the conn knows when it ends.
type tx struct {
	inner driver.Tx
	conn  *conn
}

// Commit implements driver.Tx. A stream that holds the connection is
// ended first (endForTx).
func (t *tx) Commit() error {
	if t.conn.endForTx() {
		return ErrCommitCut
	}
	t.conn.inTx, t.conn.txCtx = false, nil
	return t.conn.ended(t.inner.Commit())
}

// Rollback implements driver.Tx. A stream that holds the connection is
// ended first (endForTx).
func (t *tx) Rollback() error {
	if t.conn.endForTx() {
		// The server rolls the transaction back as the session ends.
		t.conn.inTx, t.conn.txCtx = false, nil
		return nil
	}
	t.conn.inTx, t.conn.txCtx = false, nil
	return t.conn.ended(t.inner.Rollback())
}

// endForTx ends the stream that holds the connection as its transaction
// ends: a stream opened beside the transaction on its sql.Conn, which runs
// inside that transaction, as database/sql ends the transaction's own
// rows before its Commit or Rollback. The end of the transaction's
// context comes to both at once: to the stream's watch and to
// database/sql's, which rolls the transaction back. The stream fails as
// it would for a Cancel, with sql.ErrTxDone, or the error of the
// transaction's context when it ended; a portal or a cursor is closed and
// the connection stays, an end already under way in another goroutine is
// waited for, and only then do COMMIT or ROLLBACK go out. A single
// statement with rows left is cut, as a failure cuts it, and the server
// rolls the transaction back: endForTx reports true then. Without the
// end, COMMIT or ROLLBACK would go out in the middle of the stream's
// exchange, or beside its end.
func (c *conn) endForTx() (cut bool) {
	r := c.open
	if r == nil || !c.busy() {
		return false
	}
	err := sql.ErrTxDone
	if c.txCtx != nil && c.txCtx.Err() != nil {
		err = c.txCtx.Err()
	}
	r.fail(err, true)
	r.endNow()
	return c.isCut()
}

// ErrCommitCut is the error of a Commit that found a single-statement
// stream (WithStreamMode(ModeSingle)) with rows left open beside its
// transaction on a sql.Conn: ending the stream cut the connection, and
// the server rolled the transaction back. It does not wrap
// driver.ErrBadConn, with which database/sql would wait for the stream's
// rows to close before giving the connection up; the next statement on
// the connection gets ErrConnCut.
var ErrCommitCut = errors.New("jsonstream: Commit cut the connection to end a single-statement stream open beside the transaction: the server rolled the transaction back")

// ended notes the end of a transaction begun with BeginTx: once it ended
// without error, the session is outside any transaction block.
func (c *conn) ended(err error) error {
	c.txIdle = err == nil
	return err
}

// Ping implements driver.Pinger; without it on the inner conn, database/sql
// treats a ping as successful, and so does this.
func (c *conn) Ping(ctx context.Context) error {
	defer c.leave()
	if err := c.usable(); err != nil {
		return err
	}
	if p, ok := c.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// ResetSession implements driver.SessionResetter.
func (c *conn) ResetSession(ctx context.Context) error {
	c.arg = streamArg{}
	if c.isCut() {
		return driver.ErrBadConn
	}
	// An owed end still unread is what the socket holds (owed.go): a FATAL
	// behind it is met by whoever reads. Its Sync timer keeps running
	// until the connection is used.
	if c.sock != nil && !c.sock.owes() && c.restedInPool(c.take()) && c.sock.endedWhileIdle() {
		// The server ended the session while it sat in the pool: a new
		// connection serves the query, which never meets the reset.
		c.discard()
		return driver.ErrBadConn
	}
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// IsValid implements driver.Validator: a cut connection is never reused.
func (c *conn) IsValid() bool {
	// database/sql asks as the connection goes back to the pool: an owed
	// end's Sync timer (owed.go) keeps running, and both checks are safe
	// beside it.
	if c.isCut() {
		return false
	}
	if c.sock != nil {
		c.pooledAt = c.usedAt // for ResetSession's look (idlepeek.go)
	}
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// CheckNamedValue implements driver.NamedValueChecker. It takes a *Stream
// out of the arguments and hands every other value to the inner conn's
// checker; without one it returns driver.ErrSkip, so database/sql applies
// its default conversion as it would without the wrapper.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if taken, err := c.takeArgument(nv, c); taken {
		return err
	}
	if nvc, ok := c.inner.(driver.NamedValueChecker); ok {
		return nvc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// takeArgument keeps track of the statement's arguments and takes a
// *Stream out of them for owner, the conn or stmt checking them. It
// reports whether nv was a Stream.
func (c *conn) takeArgument(nv *driver.NamedValue, owner any) (bool, error) {
	if nv.Ordinal == 1 && nv != c.arg.removed {
		c.arg = streamArg{} // the first argument of a new statement
	}
	s, ok := nv.Value.(*Stream)
	if !ok {
		c.arg.removed = nil
		c.arg.kept++
		return false, nil
	}
	var err error
	switch {
	case s == nil:
		err = streamArgError("nil *Stream")
	case c.arg.pending != nil:
		err = streamArgError("more than one Stream passed to one query")
	case s.claimed.Load():
		err = streamArgError("Stream already used by another query")
	}
	if err != nil {
		c.arg.pending = nil // the statement fails: nothing may take it
		return true, err
	}
	c.arg.pending, c.arg.owner, c.arg.removed = s, owner, nv
	return true, driver.ErrRemoveArgument
}

// takeStream returns the Stream argument of the statement that owner is
// about to run with nargs arguments, or nil. A Stream left behind by a
// statement that failed its argument checks is dropped here.
func (c *conn) takeStream(owner any, nargs int) *Stream {
	a := c.arg
	c.arg = streamArg{}
	if a.pending == nil || a.owner != owner || a.kept != nargs {
		return nil
	}
	return a.pending
}

// QueryContext implements driver.QueryerContext, falling back to
// driver.Queryer as database/sql does, or to driver.ErrSkip (database/sql
// then prepares the statement) when the inner conn has neither.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.query(ctx, c, query, args, c.sender(query, args))
}

// sender returns what sends query to the inner conn, nil when it cannot
// query.
func (c *conn) sender(query string, args []driver.NamedValue) func(context.Context) (driver.Rows, error) {
	var send func(context.Context) (driver.Rows, error)
	switch q := c.inner.(type) {
	case driver.QueryerContext:
		send = func(ctx context.Context) (driver.Rows, error) {
			return q.QueryContext(ctx, query, args)
		}
	case driver.Queryer: //nolint:staticcheck // the fallback database/sql makes
		send = func(ctx context.Context) (driver.Rows, error) {
			values, err := namedToValues(args)
			if err != nil {
				return nil, err
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return q.Query(query, values)
		}
	}
	return send
}

// query is the one way a query runs, for the conn and its statements
// (owner): it takes the query's Stream, from its arguments or its
// context; runs a cursor-backed query in cursor mode; otherwise claims the
// Stream, sends the query with send (sendQuery) and wraps its rows in a
// stream. A nil send, when the inner conn cannot query, gives
// driver.ErrSkip: database/sql then prepares the statement.
func (c *conn) query(ctx context.Context, owner any, query string, args []driver.NamedValue, send func(context.Context) (driver.Rows, error)) (driver.Rows, error) {
	s, err := queryStream(ctx, c.takeStream(owner, len(args)))
	if err != nil {
		return nil, err
	}
	defer c.leave()
	if err := c.usable(); err != nil {
		return nil, err
	}
	start := c.queryStart()
	r := newRows(ctx, c, s)
	if r.settings.resume == nil {
		return c.run(ctx, owner, query, args, send, s, r, start)
	}
	text := scanQuery(query)
	if why := c.resumeRefusal(text); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrResumeQuery, why)
	}
	if r.settings.resume.key == nil {
		return nil, fmt.Errorf("%w: WithResumeRetry or WithResumeAfterPause without WithResumeKey", ErrResumeQuery)
	}
	rr := &resumeRows{cur: r, ctx: ctx, query: query[:text.end], stream: s, set: *r.settings.resume, base: c}
	rr.args = append([]driver.NamedValue(nil), args...)
	r.resumer = rr
	// The key columns are checked before the stream starts: a query that
	// fails the check fires no event and leaves its Stream unused.
	r.holdStart = true
	if _, err := c.run(ctx, owner, query, args, send, s, r, start); err != nil {
		if !retryable(err) {
			return nil, err
		}
		// Failed before its first row: run again, holding the Stream.
		if err := claim(s); err != nil {
			return nil, err
		}
		if err := rr.resume(err); err != nil {
			unclaim(s)
			rr.closeOwn()
			return nil, err
		}
	}
	// rr.cur is r, or a continuation (which started) when r failed at once.
	held := rr.cur.holdStart
	if err := rr.bind(); err != nil {
		if held { // it never started: ended before anyone saw it
			unclaim(s)
		}
		rr.closeOwn()
		return nil, err
	}
	if held {
		rr.cur.holdStart = false
		rr.cur.begin(s)
	}
	return rr, nil
}

// noteSession notes a statement of the conn's that sets what a new
// session would not have (sessionSet): one that begins with SET, RESET
// or DISCARD, first in the text or after a semicolon. A text whose
// statements the scan is not sure of counts as one that sets.
func (c *conn) noteSession(query string) {
	if c.sessionSet {
		return
	}
	if oneOf(firstWord(query), sessionFirstWords) {
		c.sessionSet = true
		return
	}
	if strings.IndexByte(query, ';') >= 0 {
		t := scanQuery(query)
		c.sessionSet = t.sets || !t.certain && t.statements > 1
	}
}

// firstWord returns the first word of query, past spaces and comments.
func firstWord(q string) string {
	i := 0
	for i < len(q) {
		switch c := q[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' && q[i] != '\r' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			n, ok := skipComment(q, i)
			if !ok {
				return ""
			}
			i = n
		default:
			j := i
			for j < len(q) && (q[j] >= 'a' && q[j] <= 'z' || q[j] >= 'A' && q[j] <= 'Z') {
				j++
			}
			return q[i:j]
		}
	}
	return ""
}

// queryAs runs query for the stream r, made by the caller with its
// settings, without a Stream: a resumable stream's continuation.
func (c *conn) queryAs(ctx context.Context, query string, args []driver.NamedValue, r *rows) (driver.Rows, error) {
	return c.run(ctx, c, query, args, c.sender(query, args), nil, r, c.queryStart())
}

// run runs the query for the stream r in the mode chooseMode gives it.
func (c *conn) run(ctx context.Context, owner any, query string, args []driver.NamedValue, send func(context.Context) (driver.Rows, error), s *Stream, r *rows, start instant) (driver.Rows, error) {
	mode, text, err := c.chooseMode(&r.settings, owner, query, len(args))
	if err != nil {
		return nil, err
	}
	switch mode {
	case ModeCursor:
		return c.queryCursor(ctx, query, args, s, r, start)
	case ModePortal:
		return c.queryPortal(ctx, owner, query, text, args, s, r, start)
	}
	if send == nil {
		return nil, driver.ErrSkip
	}
	if err := claim(s); err != nil {
		return nil, err
	}
	c.ran()
	c.noteSession(query)
	if c.sock != nil {
		// Before the query is sent: the status of the ReadyForQuery that
		// ended the exchange before it.
		r.txBlock, _ = c.sock.frames.txBlock()
	}
	ir, err := c.sendQuery(ctx, r, query, send)
	if err != nil {
		unclaim(s)
		return nil, err
	}
	return c.bindRows(ctx, ir, s, r, start, nil, query), nil
}

// sendQuery runs send, which sends query, a single statement, for the
// stream r. When jsonstream dialed the connection, the context of a read
// is not handed to the inner driver: lib/pq would watch it for as long as
// the rows are open and, when it ends, send a cancel request and give up
// the connection, racing jsonstream's own watch. jsonstream watches it
// alone: a context that ends before the rows come cuts the connection,
// and Query returns the context's error; one that ends later fails the
// stream (rows.open).
//
// The context of a statement that writes goes to lib/pq, whose cancel
// request makes the server roll the statement back: a cut alone may let
// it commit, since the server notices a closed connection only when it
// next writes to it. Without a socket of jsonstream's, the context goes
// to the inner driver too.
func (c *conn) sendQuery(ctx context.Context, r *rows, query string, send func(context.Context) (driver.Rows, error)) (driver.Rows, error) {
	if c.sock == nil || ctx.Done() == nil {
		return send(ctx)
	}
	if scanQuery(query).writes {
		r.innerCtx = true
		return send(ctx)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.cut() })
	ir, err := send(context.Background())
	if !stop() {
		// The watch cut the connection, or is cutting it: the rows, if
		// any, cannot be read.
		if ir != nil {
			_ = ir.Close()
		}
		return nil, ctx.Err()
	}
	return ir, err
}

// ExecContext implements driver.ExecerContext with the same fallbacks as
// QueryContext.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.takeStream(c, len(args)) != nil {
		return nil, errStreamOnExec
	}
	defer c.leave()
	if err := c.usable(); err != nil {
		return nil, err
	}
	c.ran()
	c.noteSession(query)
	switch e := c.inner.(type) {
	case driver.ExecerContext:
		return e.ExecContext(ctx, query, args)
	case driver.Execer: //nolint:staticcheck // the fallback database/sql makes
		values, err := namedToValues(args)
		if err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return e.Exec(query, values)
	}
	return nil, driver.ErrSkip
}

var errStreamOnExec = streamArgError("a Stream goes with Query, not Exec")

// claim takes s, the Stream of a query about to be sent, for that query:
// a second query with s fails before it is sent, even when both run at
// once.
func claim(s *Stream) error {
	if s != nil && !s.claimed.CompareAndSwap(false, true) {
		return streamArgError("Stream already used by another query")
	}
	return nil
}

// unclaim gives s back when its query failed before the server started
// it (database/sql may retry it on another connection).
func unclaim(s *Stream) {
	if s != nil {
		s.claimed.Store(false)
	}
}

// bindRows makes the stream and binds s to it, once it is complete: a
// Controller call may come at once from another goroutine.
func (c *conn) bindRows(ctx context.Context, ir driver.Rows, s *Stream, r *rows, start instant, cur *cursor, query string) *rows {
	r.open(ctx, c, ir, start, cur)
	r.query = query
	if !r.holdStart {
		r.begin(s)
	}
	return r
}

// begin fires EventStarted and binds s to r: the Stream reaches r after
// the event, so that it is the first.
func (r *rows) begin(s *Stream) {
	r.observeStarted(r.query)
	if s != nil {
		s.bound.Store(r)
	}
}

// namedToValues is database/sql's conversion for drivers without the
// context interfaces.
func namedToValues(named []driver.NamedValue) ([]driver.Value, error) {
	values := make([]driver.Value, len(named))
	for i, nv := range named {
		if nv.Name != "" {
			return nil, errors.New("sql: driver does not support the use of Named Parameters")
		}
		values[i] = nv.Value
	}
	return values, nil
}
