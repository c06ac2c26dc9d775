package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
)

// ErrCursorQuery is wrapped by the error of a query that cursor mode
// (WithFetchSize) cannot run: DECLARE … CURSOR takes a single SELECT,
// VALUES or TABLE query, not INSERT … RETURNING, SHOW or several
// statements. The server's error is wrapped too, for errors.As.
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
	conn *conn
	r    *rows
	name string
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
	// inFlight is set while a FETCH's reply is not fully read: a failure
	// then has to bound the read (interrupt) rather than simply stop.
	inFlight atomic.Bool
	// aborted is set when a server error ended the transaction's use: the
	// cursor is gone with it.
	aborted bool
	// ended is set once the cursor was closed (and jsonstream's
	// transaction ended), or can no longer be.
	ended bool
}

// queryCursor runs query in cursor mode: it begins a transaction unless
// the connection is in one, declares the cursor and fetches the first
// batch, so that errors in the query come from Query as they do in the
// single-statement mode.
func (c *conn) queryCursor(ctx context.Context, query string, args []driver.NamedValue, st *Stream, r *rows, start time.Time) (driver.Rows, error) {
	set := &r.settings
	execer, okE := c.inner.(driver.ExecerContext)
	queryer, okQ := c.inner.(driver.QueryerContext)
	if !okE || !okQ {
		return nil, fmt.Errorf("%w: WithFetchSize(%s): cursor mode needs an inner connection with driver.ExecerContext and driver.QueryerContext, %T has not",
			ErrInvalidOption, fetchSizeString(set.fetchSize), c.inner)
	}
	if st != nil && !st.claimed.CompareAndSwap(false, true) {
		return nil, streamArgError("Stream already used by another query")
	}
	own := false
	if !c.inTx {
		inBlock, err := c.inTransactionBlock(ctx, execer)
		if err != nil {
			return nil, err
		}
		own = !inBlock
	}
	c.cursorSeq++
	cur := &cursor{
		conn: c,
		name: "jsonstream_cursor_" + strconv.FormatUint(c.cursorSeq, 10),
		own:  own,
		size: set.fetchSize,
		next: set.fetchSize,
	}
	if cur.size == FetchAuto {
		cur.size, cur.next = 0, autoFirstRows
	}
	declare, offset := declareCursor(cur.name, query)
	var err error
	c.txIdle = false
	switch {
	case own && len(args) == 0:
		// One round trip: an argument-less query goes as a simple query,
		// which takes several statements. The query itself sits inside
		// parentheses, so a second statement in it is a syntax error and
		// nothing runs.
		_, err = execer.ExecContext(ctx, "BEGIN; "+declare, nil)
		offset += len("BEGIN; ")
	case own:
		if _, err = execer.ExecContext(ctx, "BEGIN", nil); err == nil {
			_, err = execer.ExecContext(ctx, declare, args)
		}
	default:
		_, err = execer.ExecContext(ctx, declare, args)
	}
	if err != nil {
		cur.abandon()
		return nil, cursorError(err, set.fetchSize, offset)
	}
	cur.batch, err = cur.firstFetch(ctx, queryer, set.drainTimeout)
	if err != nil {
		cur.abandon()
		return nil, err
	}
	cur.first = cur.batch
	return c.bindRows(ctx, cur, st, r, start, cur), nil
}

// inTransactionBlock reports whether the session is inside a transaction
// block that jsonstream did not see begin (Exec("BEGIN")). It asks the
// server only when the connection has run statements of its own since it
// was last known to be outside one: SAVEPOINT fails with SQLSTATE 25P01
// (no_active_sql_transaction) exactly outside a transaction block, and
// its RELEASE leaves no trace inside one.
func (c *conn) inTransactionBlock(ctx context.Context, execer driver.ExecerContext) (bool, error) {
	if c.txIdle {
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

// cursorError makes a DECLARE's error say what cursor mode takes when the
// server refused the query's form (a syntax error, or a statement that
// DECLARE does not take), and points a server error's Position into the
// caller's query instead of jsonstream's DECLARE around it.
func cursorError(err error, fetchSize, offset int) error {
	switch sqlState(err) {
	case "42601", "0A000": // syntax_error, feature_not_supported
		return fmt.Errorf("%w (WithFetchSize(%s) runs it as DECLARE … CURSOR FOR, which takes one SELECT, VALUES or TABLE query; give this query WithFetchSize(0)): %w",
			ErrCursorQuery, fetchSizeString(fetchSize), shiftPosition(err, offset))
	}
	return shiftPosition(err, offset)
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

// fetch sends the next FETCH and returns its rows.
func (cur *cursor) fetch(ctx context.Context, queryer driver.QueryerContext) (driver.Rows, error) {
	cur.asked, cur.got = cur.next, 0
	cur.inFlight.Store(true)
	rows, err := queryer.QueryContext(ctx, "FETCH FORWARD "+strconv.Itoa(cur.asked)+" FROM "+cur.name, nil)
	if err != nil {
		cur.inFlight.Store(false)
		cur.aborted = true
		return nil, err
	}
	return rows, nil
}

// firstFetch sends the first FETCH. The query's context is not handed to
// the inner driver: lib/pq would watch it for as long as the first batch
// is open, and when it ends send a cancel request and give up the
// connection. A context that ends while the first batch is on its way
// bounds the read instead, as a failure does later (interrupt).
func (cur *cursor) firstFetch(ctx context.Context, queryer driver.QueryerContext, drainTimeout time.Duration) (driver.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := cur.conn.sock
	if s == nil || ctx.Done() == nil {
		return cur.fetch(ctx, queryer)
	}
	stop := context.AfterFunc(ctx, func() { s.interrupt(drainTimeout) })
	rows, err := cur.fetch(context.Background(), queryer)
	if !stop() && err != nil {
		cur.conn.cut()
		return nil, ctx.Err()
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
	for {
		if cur.batch != nil {
			err := cur.batch.Next(dest)
			if err == nil {
				cur.got++
				return nil
			}
			cur.inFlight.Store(false)
			if err != io.EOF {
				cur.aborted = true
				return err
			}
			_ = cur.batch.Close() // read to the end: nothing left to fail
			cur.batch = nil
			if cur.got < cur.asked {
				return cur.finish()
			}
		}
		if cur.ended {
			return io.EOF
		}
		r := cur.r
		if err := r.ctx.Err(); err != nil {
			return err // the query's context ended between batches
		}
		if r.txCtx != nil {
			if err := r.txCtx.Err(); err != nil {
				return err
			}
		}
		cur.grow()
		// The context is watched by the stream itself; lib/pq's own watch
		// would cost a goroutine per batch and send a cancel request.
		batch, err := cur.fetch(context.Background(), cur.conn.inner.(driver.QueryerContext))
		if errors.Is(err, driver.ErrBadConn) {
			// lib/pq finds the session gone only when it sends, and says no
			// more: name what commonly ends an idle transaction's session.
			return fmt.Errorf("jsonstream: the server ended the session of a cursor-backed stream between batches (idle_in_transaction_session_timeout, or a terminated backend): %w", err)
		}
		if err != nil {
			return err
		}
		cur.batch = batch
	}
}

// finish ends a cursor that returned its last row: COMMIT of jsonstream's
// own transaction (which closes the cursor), or CLOSE inside the caller's.
func (cur *cursor) finish() error {
	cur.ended = true
	if !cur.conn.clearDeadline() {
		return driver.ErrBadConn
	}
	stmt := "CLOSE " + cur.name
	if cur.own {
		stmt = "COMMIT"
	}
	if err := cur.exec(stmt); err != nil {
		cur.conn.discard() // the session is in an unknown state: never reuse it
		return err
	}
	cur.conn.txIdle = cur.own
	return io.EOF
}

// abandon ends a cursor whose start failed: jsonstream's own transaction
// is rolled back; in the caller's, the error already aborted the
// transaction or the cursor was never declared.
func (cur *cursor) abandon() {
	cur.ended = true
	if !cur.own {
		return
	}
	if cur.exec("ROLLBACK") != nil {
		cur.conn.discard() // the session is in an unknown state: never reuse it
		return
	}
	cur.conn.txIdle = true
}

func (cur *cursor) exec(stmt string) error {
	_, err := cur.conn.inner.(driver.ExecerContext).ExecContext(context.Background(), stmt, nil)
	return err
}

// interrupt is how a failure (Cancel, pause timeout, context) stops a
// cursor-backed stream, from any goroutine. Between batches the server is
// idle and nothing needs stopping: the consumer's Close closes the cursor.
// With a batch in flight the reader gets the drain timeout to finish it
// before its read fails and the connection is cut.
func (cur *cursor) interrupt() {
	if !cur.inFlight.Load() {
		return
	}
	if s := cur.conn.sock; s != nil {
		s.interrupt(cur.r.settings.drainTimeout)
	}
}

// close ends the cursor when the stream is closed: it reads off the batch
// in flight, then closes the cursor and rolls back jsonstream's own
// transaction, and the connection stays in the pool with its session.
// When that batch turns out to be the last (a QueryRow, a small result)
// the stream was complete after all and its transaction is committed, as
// the single-statement mode's drain lets the statement finish. A batch
// that does not drain in time (CloseAuto's drain timeout; at once under
// CloseCancel) is cut, as in the single-statement mode.
func (cur *cursor) close() error {
	if cur.ended {
		return nil
	}
	c := cur.conn
	var drainErr error
	if cur.batch != nil {
		cut, last, err := cur.drainBatch()
		if cut {
			cur.ended = true
			return nil
		}
		if last && err == nil {
			if err := cur.finish(); err != io.EOF {
				c.discard() // the session is in an unknown state: never reuse it
				return err
			}
			return nil
		}
		drainErr = err
	}
	cur.ended = true
	if c.isCut() || !c.clearDeadline() {
		return nil
	}
	if cur.aborted && !cur.own {
		return drainErr // the caller's transaction is aborted: the cursor went with it
	}
	stmt := "CLOSE " + cur.name
	if cur.own {
		stmt = "ROLLBACK"
	}
	if err := cur.exec(stmt); err != nil {
		c.discard() // the session is in an unknown state: never reuse it
		if drainErr != nil {
			return drainErr
		}
		return err
	}
	c.txIdle = cur.own
	return drainErr
}

// drainBatch reads off the rest of the batch in flight as the close mode
// says. It reports whether it cut the connection instead, and whether
// the batch was the cursor's last.
func (cur *cursor) drainBatch() (cut, last bool, err error) {
	batch, c := cur.batch, cur.conn
	cur.batch = nil
	defer cur.inFlight.Store(false)
	mode := cur.r.settings.closeMode
	if !cur.own {
		mode = CloseDrain // a cut would end the caller's transaction
	}
	s := c.sock
	switch {
	case s == nil:
	case mode == CloseCancel:
		c.cut()
		_ = batch.Close()
		return true, false, nil
	case mode == CloseAuto && s.until.Load() == 0:
		s.beginDrain(time.Now().Add(cur.r.settings.drainTimeout))
	}
	dest := make([]driver.Value, len(batch.Columns()))
	for err == nil {
		if err = batch.Next(dest); err == nil {
			cur.got++
		}
	}
	if err == io.EOF {
		err = nil
	}
	_ = batch.Close()
	if err != nil && isTimeout(err) {
		c.cut()
		return true, false, nil
	}
	if s != nil && !s.endDrain() {
		c.cut()
		return true, false, nil
	}
	if err != nil {
		cur.aborted = true
		return false, false, err
	}
	return false, cur.got < cur.asked, nil
}

// clearDeadline ends a failure's bound on the socket (interrupt) before
// the connection sends anything more; when that fails, it cuts the
// connection and reports false.
func (c *conn) clearDeadline() bool {
	if c.sock == nil || c.sock.endDrain() {
		return true
	}
	c.cut()
	return false
}

// The column type methods forward to the first batch's rows, which
// describe the cursor's columns as the query's own rows would.

// ColumnTypeScanType implements driver.RowsColumnTypeScanType.
func (cur *cursor) ColumnTypeScanType(index int) reflect.Type {
	if c, ok := cur.first.(driver.RowsColumnTypeScanType); ok {
		return c.ColumnTypeScanType(index)
	}
	return reflect.TypeFor[any]()
}

// ColumnTypeDatabaseTypeName implements driver.RowsColumnTypeDatabaseTypeName.
func (cur *cursor) ColumnTypeDatabaseTypeName(index int) string {
	if c, ok := cur.first.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return c.ColumnTypeDatabaseTypeName(index)
	}
	return ""
}

// ColumnTypeLength implements driver.RowsColumnTypeLength.
func (cur *cursor) ColumnTypeLength(index int) (int64, bool) {
	if c, ok := cur.first.(driver.RowsColumnTypeLength); ok {
		return c.ColumnTypeLength(index)
	}
	return 0, false
}

// ColumnTypeNullable implements driver.RowsColumnTypeNullable.
func (cur *cursor) ColumnTypeNullable(index int) (nullable, ok bool) {
	if c, ok := cur.first.(driver.RowsColumnTypeNullable); ok {
		return c.ColumnTypeNullable(index)
	}
	return false, false
}

// ColumnTypePrecisionScale implements driver.RowsColumnTypePrecisionScale.
func (cur *cursor) ColumnTypePrecisionScale(index int) (precision, scale int64, ok bool) {
	if c, ok := cur.first.(driver.RowsColumnTypePrecisionScale); ok {
		return c.ColumnTypePrecisionScale(index)
	}
	return 0, 0, false
}

// Close implements driver.Rows; the stream's Close calls close instead.
func (cur *cursor) Close() error { return cur.close() }
