package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
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
	sock net.Conn
	// cutDone is set once sock was closed; the conn is then bad.
	cutDone atomic.Bool

	// pending is the Stream argument of the statement being prepared for
	// execution, taken by the query that follows.
	pending *Stream
	// removedAt is the ordinal of the previous argument check if it removed
	// a Stream, else 0; it tells a new statement's first argument from the
	// argument after a removed Stream (both have ordinal 1).
	removedAt int
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

func newConn(inner driver.Conn, s *settings, sock *net.Conn) *conn {
	c := &conn{inner: inner, settings: s}
	if sock != nil {
		c.sock = *sock
	}
	return c
}

// Unwrap returns the inner driver's connection, for sql.Conn.Raw.
func (c *conn) Unwrap() driver.Conn { return c.inner }

// cut closes the network connection, which ends whatever the server was
// sending and makes the server stop the query. It reports whether the
// connection could be cut; safe from any goroutine.
func (c *conn) cut() bool {
	if c.sock == nil {
		return false
	}
	if c.cutDone.CompareAndSwap(false, true) {
		_ = c.sock.Close()
	}
	return true
}

func (c *conn) isCut() bool { return c.cutDone.Load() }

// Prepare implements driver.Conn.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext implements driver.ConnPrepareContext, falling back to
// Prepare as database/sql does.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	c.pending = nil
	var si driver.Stmt
	var err error
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		si, err = p.PrepareContext(ctx, query)
	} else {
		si, err = c.inner.Prepare(query)
		if err == nil && ctx.Err() != nil {
			_ = si.Close()
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	return newStmt(c, si), nil
}

// Close implements driver.Conn.
func (c *conn) Close() error { return c.inner.Close() }

// Begin implements driver.Conn.
func (c *conn) Begin() (driver.Tx, error) { //nolint:staticcheck // required by driver.Conn
	c.pending = nil
	return c.inner.Begin() //nolint:staticcheck
}

// BeginTx implements driver.ConnBeginTx, with database/sql's checks when
// the inner conn lacks it.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.pending = nil
	if b, ok := c.inner.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	if opts.Isolation != 0 {
		return nil, errors.New("sql: driver does not support non-default isolation level")
	}
	if opts.ReadOnly {
		return nil, errors.New("sql: driver does not support read-only transactions")
	}
	tx, err := c.inner.Begin() //nolint:staticcheck
	if err == nil && ctx.Err() != nil {
		_ = tx.Rollback()
		return nil, ctx.Err()
	}
	return tx, err
}

// Ping implements driver.Pinger; without it on the inner conn, database/sql
// treats a ping as successful, and so does this.
func (c *conn) Ping(ctx context.Context) error {
	if p, ok := c.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// ResetSession implements driver.SessionResetter.
func (c *conn) ResetSession(ctx context.Context) error {
	c.pending, c.removedAt = nil, 0
	if c.isCut() {
		return driver.ErrBadConn
	}
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// IsValid implements driver.Validator: a cut connection is never reused.
func (c *conn) IsValid() bool {
	if c.isCut() {
		return false
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
	if taken, err := c.takeArgument(nv); taken {
		return err
	}
	if nvc, ok := c.inner.(driver.NamedValueChecker); ok {
		return nvc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// takeArgument keeps track of the statement's arguments and takes a
// *Stream out of them. It reports whether nv was a Stream.
func (c *conn) takeArgument(nv *driver.NamedValue) (bool, error) {
	if nv.Ordinal == 1 && c.removedAt != 1 {
		c.pending = nil // first argument of a new statement
	}
	s, ok := nv.Value.(*Stream)
	if !ok {
		c.removedAt = 0
		return false, nil
	}
	switch {
	case s == nil:
		return true, streamArgError("nil *Stream")
	case c.pending != nil:
		return true, streamArgError("more than one Stream passed to one query")
	case s.claimed.Load():
		return true, streamArgError("Stream already used by another query")
	}
	c.pending, c.removedAt = s, nv.Ordinal
	return true, driver.ErrRemoveArgument
}

// takeStream returns the Stream argument of the statement about to run.
func (c *conn) takeStream() *Stream {
	s := c.pending
	c.pending, c.removedAt = nil, 0
	return s
}

// QueryContext implements driver.QueryerContext, falling back to
// driver.Queryer as database/sql does, or to driver.ErrSkip (database/sql
// then prepares the statement) when the inner conn has neither.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s := c.takeStream()
	start := time.Now()
	var ir driver.Rows
	var err error
	switch q := c.inner.(type) {
	case driver.QueryerContext:
		ir, err = q.QueryContext(ctx, query, args)
	case driver.Queryer: //nolint:staticcheck // the fallback database/sql makes
		var values []driver.Value
		if values, err = namedToValues(args); err != nil {
			return nil, err
		}
		if err = ctx.Err(); err != nil {
			return nil, err
		}
		ir, err = q.Query(query, values)
	default:
		return nil, driver.ErrSkip
	}
	if err != nil {
		return nil, err
	}
	return c.wrapRows(ctx, ir, s, start)
}

// ExecContext implements driver.ExecerContext with the same fallbacks as
// QueryContext.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.takeStream() != nil {
		return nil, errStreamOnExec
	}
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

// wrapRows makes the stream for the inner rows of one query and binds s,
// the query's Stream argument, to it.
func (c *conn) wrapRows(ctx context.Context, ir driver.Rows, s *Stream, start time.Time) (driver.Rows, error) {
	if s == nil {
		return newRows(ctx, c, ir, nil, start), nil
	}
	if !s.claimed.CompareAndSwap(false, true) {
		_ = ir.Close()
		return nil, streamArgError("Stream already used by another query")
	}
	r := newRows(ctx, c, ir, s.opts, start)
	s.bound.Store(r)
	return r, nil
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
