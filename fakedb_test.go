package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// fakeDriver is a small in-memory driver whose rows the test controls, for
// what go-sqlmock cannot express: a Next that blocks until the test feeds
// a row, counts of the inner Next calls, conns without optional
// interfaces.
type fakeDriver struct {
	// newRows makes the rows of each query; it gets the query text.
	newRows func(query string) *fakeRows
	// minimal makes conns that implement only driver.Conn (plus Queryer).
	minimal bool

	mu    sync.Mutex // guards conns
	conns []*fakeConn
}

func (d *fakeDriver) Open(string) (driver.Conn, error) {
	c := &fakeConn{driver: d}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	if d.minimal {
		return minimalConn{c}, nil
	}
	return c, nil
}

// fakeConnector opens fake conns.
type fakeConnector struct{ d *fakeDriver }

func (c fakeConnector) Connect(context.Context) (driver.Conn, error) { return c.d.Open("") }
func (c fakeConnector) Driver() driver.Driver                        { return c.d }

type fakeConn struct {
	driver *fakeDriver
	closed atomic.Bool
	args   []driver.NamedValue // arguments of the last query, as the conn got them
}

func (c *fakeConn) Prepare(query string) (driver.Stmt, error) {
	return &fakeStmt{conn: c, query: query}, nil
}
func (c *fakeConn) Close() error              { c.closed.Store(true); return nil }
func (c *fakeConn) Begin() (driver.Tx, error) { return fakeTx{}, nil }

func (c *fakeConn) QueryContext(_ context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	c.args = args
	if query == "fail" {
		return nil, errFakeQuery
	}
	return c.driver.newRows(query), nil
}

func (c *fakeConn) ExecContext(_ context.Context, _ string, args []driver.NamedValue) (driver.Result, error) {
	c.args = args
	return driver.RowsAffected(len(args)), nil
}

var errFakeQuery = errors.New("fake: query failed")

// minimalConn hides every optional interface of fakeConn.
type minimalConn struct{ c *fakeConn }

func (m minimalConn) Prepare(query string) (driver.Stmt, error) { return m.c.Prepare(query) }
func (m minimalConn) Close() error                              { return m.c.Close() }
func (m minimalConn) Begin() (driver.Tx, error)                 { return m.c.Begin() }

type fakeTx struct{}

func (fakeTx) Commit() error   { return nil }
func (fakeTx) Rollback() error { return nil }

type fakeStmt struct {
	conn  *fakeConn
	query string
}

func (s *fakeStmt) Close() error  { return nil }
func (s *fakeStmt) NumInput() int { return strings.Count(s.query, "?") }
func (s *fakeStmt) Exec(args []driver.Value) (driver.Result, error) {
	return driver.RowsAffected(len(args)), nil
}
func (s *fakeStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.conn.args = nil
	for i, a := range args {
		s.conn.args = append(s.conn.args, driver.NamedValue{Ordinal: i + 1, Value: a})
	}
	return s.conn.driver.newRows(s.query), nil
}

// fakeRows yields n rows of one text column ("row 0", "row 1", ...), or,
// when feed is set, one row per value received from feed until it is
// closed. Next blocks on feed, which is how tests hold a row "on its way".
type fakeRows struct {
	n    int
	feed chan string
	err  error // returned by Next after the rows, instead of io.EOF
	// closeErr is returned by Close.
	closeErr error
	next     atomic.Int64
	close    atomic.Int64
	i        int
}

func countRows(n int) func(string) *fakeRows {
	return func(string) *fakeRows { return &fakeRows{n: n} }
}

func (r *fakeRows) Columns() []string { return []string{"data"} }
func (r *fakeRows) Close() error      { r.close.Add(1); return r.closeErr }

func (r *fakeRows) Next(dest []driver.Value) error {
	r.next.Add(1)
	if r.feed != nil {
		v, ok := <-r.feed
		if !ok {
			return io.EOF
		}
		dest[0] = v
		return nil
	}
	if r.i >= r.n {
		if r.err != nil {
			return r.err
		}
		return io.EOF
	}
	dest[0] = rowText(r.i)
	r.i++
	return nil
}

// rowText is the value of row i; a constant string for the first rows so
// the benchmarks do not measure strconv.
func rowText(i int) string {
	if i < len(smallRowTexts) {
		return smallRowTexts[i]
	}
	return "row " + strconv.Itoa(i)
}

var smallRowTexts = func() []string {
	s := make([]string, 128)
	for i := range s {
		s[i] = "row " + strconv.Itoa(i)
	}
	return s
}()
