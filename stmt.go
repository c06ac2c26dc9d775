package jsonstream

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"

	"github.com/lib/pq/oid"
)

// stmt wraps a prepared statement of the inner driver. Its rows are
// streams like those of conn.QueryContext.
type stmt struct {
	inner driver.Stmt
	conn  *conn
	// query is the statement's text: cursor mode declares a cursor for
	// it instead of running the prepared statement, and the observer may
	// be given it.
	query string
	// name is the statement's name on the server, as lib/pq's Parse gave
	// it; empty when jsonstream did not see it, and its queries then run
	// as lib/pq runs them. A portal stream binds the statement itself, so
	// that it runs what lib/pq would run: the plan and the constants of
	// the Prepare, and the server's error when the result's columns
	// changed since. described is set once types, fields and names hold
	// the statement's description, which a portal stream asks for at the
	// statement's first query (lib/pq has it from the Prepare).
	name      string
	described bool
	types     []oid.Oid
	fields    []pgField
	names     []string
}

// stmtName returns the statement name of a Parse message at the start of
// p, lib/pq's write that prepares a statement; "" when p starts with no
// Parse that names a statement.
func stmtName(p []byte) string {
	if len(p) < 6 || p[0] != 'P' {
		return ""
	}
	n := int(binary.BigEndian.Uint32(p[1:]))
	if n < 4 || 1+n > len(p) {
		return ""
	}
	body := p[5 : 1+n]
	end := bytes.IndexByte(body, 0)
	if end <= 0 {
		return ""
	}
	return string(body[:end])
}

// stmtConverter is a stmt whose inner statement has the deprecated
// driver.ColumnConverter, which database/sql still consults; it is a
// separate type so that a statement without it does not seem to have it.
type stmtConverter struct {
	*stmt
	cc driver.ColumnConverter //nolint:staticcheck // forwarded: database/sql still consults it
}

var (
	_ driver.Stmt              = (*stmt)(nil)
	_ driver.StmtQueryContext  = (*stmt)(nil)
	_ driver.StmtExecContext   = (*stmt)(nil)
	_ driver.NamedValueChecker = (*stmt)(nil)
	_ driver.ColumnConverter   = stmtConverter{} //nolint:staticcheck // forwarded: database/sql still consults it
)

func newStmt(c *conn, si driver.Stmt, query, name string) driver.Stmt {
	s := &stmt{inner: si, conn: c, query: query, name: name}
	if cc, ok := si.(driver.ColumnConverter); ok { //nolint:staticcheck // forwarded as database/sql uses it
		return stmtConverter{s, cc}
	}
	return s
}

// ColumnConverter implements driver.ColumnConverter.
func (s stmtConverter) ColumnConverter(idx int) driver.ValueConverter {
	return s.cc.ColumnConverter(idx)
}

// Unwrap returns the inner driver's statement: what runs through it
// jsonstream does not see.
func (s *stmt) Unwrap() driver.Stmt {
	s.conn.unwrapped = true
	return s.inner
}

// Close implements driver.Stmt. While a stream holds the connection
// (busy), lib/pq's Close would read the stream's replies as its own: the
// statement is closed by the next statement on the connection instead
// (conn.closeStmts).
func (s *stmt) Close() error {
	if s.conn.busy() {
		s.conn.closeLater = append(s.conn.closeLater, s.inner)
		return nil
	}
	return s.inner.Close()
}

// NumInput implements driver.Stmt. A Stream argument is not counted: it
// takes no placeholder.
func (s *stmt) NumInput() int { return s.inner.NumInput() }

// Exec implements driver.Stmt.
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) { //nolint:staticcheck // required by driver.Stmt
	s.conn.arg = streamArg{}
	defer s.conn.leave()
	if err := s.conn.usable(); err != nil {
		return nil, err
	}
	s.conn.ran()
	return s.inner.Exec(args) //nolint:staticcheck
}

// Query implements driver.Stmt.
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) { //nolint:staticcheck // required by driver.Stmt
	st := s.conn.takeStream(s, len(args))
	defer s.conn.leave()
	if err := s.conn.usable(); err != nil {
		return nil, err
	}
	start := s.conn.queryStart()
	r := newRows(context.Background(), s.conn, st)
	if r.settings.fetchSize != 0 {
		named := make([]driver.NamedValue, len(args))
		for i, v := range args {
			named[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
		}
		return s.conn.queryCursor(context.Background(), s.query, named, st, r, start)
	}
	if err := claim(st); err != nil {
		return nil, err
	}
	s.conn.ran()
	ir, err := s.inner.Query(args) //nolint:staticcheck
	if err != nil {
		unclaim(st)
		return nil, err
	}
	return s.conn.bindRows(context.Background(), ir, st, r, start, nil, s.query), nil
}

// CheckNamedValue implements driver.NamedValueChecker: a *Stream is taken
// out; other values go to the inner statement's checker, else the inner
// conn's, else database/sql's own conversion (driver.ErrSkip).
func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error {
	if taken, err := s.conn.takeArgument(nv, s); taken {
		return err
	}
	if nvc, ok := s.inner.(driver.NamedValueChecker); ok {
		return nvc.CheckNamedValue(nv)
	}
	if nvc, ok := s.conn.inner.(driver.NamedValueChecker); ok {
		return nvc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// QueryContext implements driver.StmtQueryContext, falling back to Query
// as database/sql does.
func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	var send func(context.Context) (driver.Rows, error)
	if q, ok := s.inner.(driver.StmtQueryContext); ok {
		send = func(ctx context.Context) (driver.Rows, error) {
			return q.QueryContext(ctx, args)
		}
	} else {
		send = func(ctx context.Context) (driver.Rows, error) {
			values, err := namedToValues(args)
			if err != nil {
				return nil, err
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return s.inner.Query(values) //nolint:staticcheck // the fallback database/sql makes
		}
	}
	return s.conn.query(ctx, s, s.query, args, send)
}

// ExecContext implements driver.StmtExecContext, falling back to Exec as
// database/sql does; that fallback is what pq.CopyIn statements use.
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if s.conn.takeStream(s, len(args)) != nil {
		return nil, errStreamOnExec
	}
	defer s.conn.leave()
	if err := s.conn.usable(); err != nil {
		return nil, err
	}
	s.conn.ran()
	if e, ok := s.inner.(driver.StmtExecContext); ok {
		return e.ExecContext(ctx, args)
	}
	values, err := namedToValues(args)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.inner.Exec(values) //nolint:staticcheck
}
