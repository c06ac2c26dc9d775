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
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeDriver is the tests' one inner driver, for what go-sqlmock cannot
// express. It is a driver.Driver and a driver.Connector; each test sets
// its behaviour through the fields below before the first connection.
//
// Its conns play a server: every statement they run (Exec, Query, a
// prepared statement's runs; not Prepare, Begin or a driver.Tx's end) is
// logged (statements), may be failed (fail, before) and watched (after).
// The server knows a few statements: a query whose text is "fail" fails
// with errFakeQuery; SAVEPOINT outside a transaction block fails with
// 25P01, as PostgreSQL's does; BEGIN, COMMIT and ROLLBACK open and end that
// block; a statement holding DECLARE opens a cursor of cursorRows rows,
// which each FETCH FORWARD n reads n at most of. Any other query returns
// newRows(query).
type fakeDriver struct {
	// newRows makes the rows of each query but a FETCH; nil: one row.
	newRows func(query string) *fakeRows
	// cursorRows is how many rows the cursor of each DECLARE holds, width
	// the length of each of their values (0: rowText).
	cursorRows, width int
	// fail maps a statement prefix to the error the statement gets; once
	// conns are open, change it under mu.
	fail map[string]error

	// Hooks, each nil by default. open runs first in Open (with its DSN)
	// and Connect (with ""): an error fails them. before runs before a
	// statement reaches the server: an error fails it, unlogged. after
	// runs once a statement ran, whatever its outcome. onNext is given
	// the result of each Next of every rows the conns return, and
	// returns what Next returns.
	open   func(dsn string) error
	before func(query string) error
	after  func(query string)
	onNext func(err error) error

	// The conns Open and Connect hand out implement driver.Conn,
	// driver.QueryerContext and driver.ExecerContext (queryConn). With
	// minimal they implement driver.Conn alone (minimalConn), so that
	// database/sql falls back to Prepare; with converter their statements
	// have a driver.ColumnConverter (converterStmt). With full they are
	// the fakeConn itself, with every optional interface of a conn, and
	// statements with a driver.NamedValueChecker (checkerStmt).
	minimal, converter, full bool
	// pingErr is what a full conn's Ping returns.
	pingErr error

	// dialed gives each conn that Connect opens a fakeSock of its own,
	// put in jsonstream's socket slot as jsonstream's dialer does: a
	// connection that jsonstream can cut and bound. The conn reads the
	// reply of each FETCH through it, and its rows' waits (fakeRows.feed)
	// end when it is cut.
	dialed bool

	// noLog keeps no statement log: for benchmarks, whose log would grow
	// with b.N.
	noLog bool

	closed atomic.Bool // Close was called: sql.DB.Close reached the connector

	mu    sync.Mutex // guards log, fail, conns and each conn's session state
	log   []string
	conns []*fakeConn
}

var (
	_ driver.Driver    = (*fakeDriver)(nil)
	_ driver.Connector = (*fakeDriver)(nil)
	_ io.Closer        = (*fakeDriver)(nil)
)

// Open implements driver.Driver.
func (d *fakeDriver) Open(dsn string) (driver.Conn, error) {
	if d.open != nil {
		if err := d.open(dsn); err != nil {
			return nil, err
		}
	}
	return d.openConn(nil).handOut(), nil
}

// Connect implements driver.Connector.
func (d *fakeDriver) Connect(ctx context.Context) (driver.Conn, error) {
	if d.open != nil {
		if err := d.open(""); err != nil {
			return nil, err
		}
	}
	var fs *fakeSock
	if d.dialed {
		fs = newFakeSock()
	}
	c := d.openConn(fs)
	if slot, ok := ctx.Value(socketKey{}).(*socketSlot); ok && c.wire != nil {
		slot.conn.Store(c.wire)
	}
	return c.handOut(), nil
}

// Driver implements driver.Connector.
func (d *fakeDriver) Driver() driver.Driver { return d }

// Close implements io.Closer, as some connectors do.
func (d *fakeDriver) Close() error { d.closed.Store(true); return nil }

// openConn opens a conn over fs (nil: a conn without a socket).
func (d *fakeDriver) openConn(fs *fakeSock) *fakeConn {
	c := &fakeConn{driver: d, sock: fs}
	if fs != nil {
		c.wire = fs.netConn()
	}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c
}

// opened returns the conns opened so far.
func (d *fakeDriver) opened() []*fakeConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeConn(nil), d.conns...)
}

// statements returns the statements run so far, in order.
func (d *fakeDriver) statements() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

// reset forgets the statements run so far.
func (d *fakeDriver) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = nil
}

var errFakeQuery = errors.New("fake: query failed")

// sqlStateErr is a server error with a SQLSTATE, as *pq.Error is.
type sqlStateErr string

func (e sqlStateErr) Error() string { return "server: " + string(e) }

func (e sqlStateErr) SQLState() string { return string(e) }

// fakeConn is a conn of fakeDriver. It implements every optional
// interface of a driver.Conn and counts their calls (called); the
// driver hands it out behind queryConn or minimalConn unless full.
type fakeConn struct {
	driver *fakeDriver
	// sock is the conn's socket when the driver dialed it, and wire is
	// jsonstream's wrapper of it, which the conn reads through as lib/pq
	// reads through the dialer's connection.
	sock *fakeSock
	wire *sock

	closed  atomic.Bool
	invalid atomic.Bool         // IsValid reports false
	args    []driver.NamedValue // arguments of the last query, as the conn got them
	txOpts  driver.TxOptions    // of the last BeginTx

	// The session, guarded by driver.mu: in a transaction block, and the
	// rows left in the open cursor.
	inTx bool
	left int

	callsMu sync.Mutex
	calls   map[string]int
}

var (
	_ driver.Conn               = (*fakeConn)(nil)
	_ driver.Pinger             = (*fakeConn)(nil)
	_ driver.SessionResetter    = (*fakeConn)(nil)
	_ driver.Validator          = (*fakeConn)(nil)
	_ driver.ConnBeginTx        = (*fakeConn)(nil)
	_ driver.ConnPrepareContext = (*fakeConn)(nil)
	_ driver.NamedValueChecker  = (*fakeConn)(nil)
	_ driver.QueryerContext     = (*fakeConn)(nil)
	_ driver.ExecerContext      = (*fakeConn)(nil)
)

// handOut is c as the driver hands it out: behind the view its settings
// select.
func (c *fakeConn) handOut() driver.Conn {
	switch {
	case c.driver.full:
		return c
	case c.driver.minimal:
		return minimalConn{c}
	}
	return queryConn{c}
}

// queryConn is a fakeConn with only driver.QueryerContext and
// driver.ExecerContext besides driver.Conn.
type queryConn struct{ c *fakeConn }

func (q queryConn) Prepare(query string) (driver.Stmt, error) { return q.c.Prepare(query) }
func (q queryConn) Close() error                              { return q.c.Close() }
func (q queryConn) Begin() (driver.Tx, error)                 { return q.c.Begin() }
func (q queryConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return q.c.QueryContext(ctx, query, args)
}
func (q queryConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return q.c.ExecContext(ctx, query, args)
}

// minimalConn is a fakeConn with no optional interface at all.
type minimalConn struct{ c *fakeConn }

func (m minimalConn) Prepare(query string) (driver.Stmt, error) { return m.c.Prepare(query) }
func (m minimalConn) Close() error                              { return m.c.Close() }
func (m minimalConn) Begin() (driver.Tx, error)                 { return m.c.Begin() }

func (c *fakeConn) count(method string) {
	c.callsMu.Lock()
	defer c.callsMu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[method]++
}

// called returns how many times method was called.
func (c *fakeConn) called(method string) int {
	c.callsMu.Lock()
	defer c.callsMu.Unlock()
	return c.calls[method]
}

func (c *fakeConn) Prepare(query string) (driver.Stmt, error) {
	c.count("Prepare")
	return c.prepare(query), nil
}

func (c *fakeConn) PrepareContext(_ context.Context, query string) (driver.Stmt, error) {
	c.count("PrepareContext")
	return c.prepare(query), nil
}

func (c *fakeConn) prepare(query string) driver.Stmt {
	s := &fakeStmt{conn: c, query: query}
	switch {
	case c.driver.full:
		return checkerStmt{s}
	case c.driver.converter:
		return converterStmt{s}
	}
	return s
}

func (c *fakeConn) Close() error { c.closed.Store(true); return nil }

func (c *fakeConn) Begin() (driver.Tx, error) { return fakeTx{}, nil }

func (c *fakeConn) BeginTx(_ context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.count("BeginTx")
	c.txOpts = opts
	return fakeTx{}, nil
}

func (c *fakeConn) Ping(context.Context) error { c.count("Ping"); return c.driver.pingErr }

func (c *fakeConn) ResetSession(context.Context) error { c.count("ResetSession"); return nil }

func (c *fakeConn) IsValid() bool { c.count("IsValid"); return !c.invalid.Load() }

// celsius is a type only a full conn's NamedValueChecker knows how to send.
type celsius int

// fahrenheit is a type only a full conn's statements' NamedValueChecker
// knows how to send.
type fahrenheit int

func itoaTest(n int) string { return string(rune('0'+n/10)) + string(rune('0'+n%10)) }

func (c *fakeConn) CheckNamedValue(nv *driver.NamedValue) error {
	c.count("CheckNamedValue")
	if v, ok := nv.Value.(celsius); ok {
		nv.Value = "C" + itoaTest(int(v))
		return nil
	}
	return driver.ErrSkip
}

func (c *fakeConn) QueryContext(_ context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	c.count("QueryContext")
	c.args = args
	return c.query(query)
}

func (c *fakeConn) ExecContext(_ context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	c.count("ExecContext")
	c.args = args
	if err := c.run(query); err != nil {
		return nil, err
	}
	return driver.RowsAffected(len(args)), nil
}

// query runs a query and returns its rows.
func (c *fakeConn) query(query string) (driver.Rows, error) {
	fetch := strings.HasPrefix(query, "FETCH FORWARD ")
	if fetch && c.wire != nil {
		// The reply comes through the socket: a read that fails, as a
		// deadline or a cut fails it, fails the FETCH as it fails lib/pq.
		if _, err := c.wire.Read(make([]byte, 1)); err != nil {
			return nil, err
		}
	}
	if err := c.run(query); err != nil {
		return nil, err
	}
	d := c.driver
	var r *fakeRows
	switch {
	case fetch:
		n, err := strconv.Atoi(strings.Fields(query)[2])
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		n = min(n, c.left)
		c.left -= n
		d.mu.Unlock()
		r = &fakeRows{n: n, width: d.width}
	case d.newRows != nil:
		r = d.newRows(query)
	default:
		r = &fakeRows{n: 1}
	}
	if c.sock != nil && r.sock == nil {
		r.sock = c.sock
	}
	if d.onNext != nil {
		r.onNext = d.onNext
	}
	return r, nil
}

// run runs one statement on the fake server.
func (c *fakeConn) run(stmt string) error {
	d := c.driver
	if d.before != nil {
		if err := d.before(stmt); err != nil {
			return err
		}
	}
	err := c.serve(stmt)
	if d.after != nil {
		d.after(stmt)
	}
	return err
}

func (c *fakeConn) serve(stmt string) error {
	d := c.driver
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.noLog {
		d.log = append(d.log, stmt)
	}
	if stmt == "fail" {
		return errFakeQuery
	}
	for prefix, err := range d.fail {
		if strings.HasPrefix(stmt, prefix) {
			return err
		}
	}
	switch {
	case strings.HasPrefix(stmt, "SAVEPOINT"):
		if !c.inTx {
			return sqlStateErr("25P01")
		}
	case strings.HasPrefix(stmt, "BEGIN"):
		c.inTx = true
	case stmt == "COMMIT", stmt == "ROLLBACK":
		c.inTx = false
	}
	if strings.Contains(stmt, "DECLARE") {
		c.left = d.cursorRows
	}
	return nil
}

type fakeTx struct{}

func (fakeTx) Commit() error   { return nil }
func (fakeTx) Rollback() error { return nil }

// fakeStmt is a prepared statement of a fakeConn; it runs on the conn.
type fakeStmt struct {
	conn  *fakeConn
	query string
}

func (s *fakeStmt) Close() error  { return nil }
func (s *fakeStmt) NumInput() int { return strings.Count(s.query, "?") }

func (s *fakeStmt) Exec(args []driver.Value) (driver.Result, error) {
	if err := s.conn.run(s.query); err != nil {
		return nil, err
	}
	return driver.RowsAffected(len(args)), nil
}

func (s *fakeStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.conn.args = nil
	for i, a := range args {
		s.conn.args = append(s.conn.args, driver.NamedValue{Ordinal: i + 1, Value: a})
	}
	return s.conn.query(s.query)
}

// checkerStmt is the statement of a full conn: it has a
// driver.NamedValueChecker of its own.
type checkerStmt struct{ *fakeStmt }

func (s checkerStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if v, ok := nv.Value.(fahrenheit); ok {
		nv.Value = "F" + itoaTest(int(v))
		return nil
	}
	return driver.ErrSkip
}

// converterStmt is the statement of a converter conn: it has the
// deprecated driver.ColumnConverter, which doubles integers so that its
// use shows in the arguments.
type converterStmt struct{ *fakeStmt }

func (converterStmt) ColumnConverter(int) driver.ValueConverter { return doubler{} }

type doubler struct{}

func (doubler) ConvertValue(v any) (driver.Value, error) {
	if n, ok := v.(int); ok {
		return int64(2 * n), nil
	}
	return driver.DefaultParameterConverter.ConvertValue(v)
}

// fakeRows yields n rows of one text column ("row 0", "row 1", ..., or
// width bytes of "x" each), then err, or io.EOF. When feed is set it
// yields instead one row per value received from feed until feed is
// closed: Next blocks on feed, which is how tests hold a row "on its way".
// That wait ends in errCutRead when fail is closed, or, on a conn with a
// socket, when the socket is cut, unless buffered: the row it waits for
// is already in the client's buffer, as lib/pq's bufio may hold it.
type fakeRows struct {
	n, width int
	err      error // returned by Next after the rows, instead of io.EOF
	closeErr error // returned by Close

	feed     chan string
	fail     chan struct{}
	buffered bool
	sock     *fakeSock // the socket of the conn that returned the rows

	onNext func(error) error // see fakeDriver.onNext

	next  atomic.Int64 // inner Next calls
	close atomic.Int64 // Close calls
	i     int
}

// errCutRead is what a fake read on a cut connection returns.
var errCutRead = errors.New("fake: read on a cut connection")

func countRows(n int) func(string) *fakeRows {
	return func(string) *fakeRows { return &fakeRows{n: n} }
}

// newFeedRows returns rows fed by the test, whose wait can be failed.
func newFeedRows() *fakeRows {
	return &fakeRows{feed: make(chan string), fail: make(chan struct{})}
}

func (r *fakeRows) Columns() []string { return []string{"data"} }
func (r *fakeRows) Close() error      { r.close.Add(1); return r.closeErr }

func (r *fakeRows) Next(dest []driver.Value) error {
	err := r.nextRow(dest)
	if r.onNext != nil {
		err = r.onNext(err)
	}
	return err
}

func (r *fakeRows) nextRow(dest []driver.Value) error {
	r.next.Add(1)
	if r.feed != nil {
		var cut <-chan struct{}
		if r.sock != nil && !r.buffered {
			cut = r.sock.closed
		}
		select {
		case v, ok := <-r.feed:
			if !ok {
				return io.EOF
			}
			dest[0] = v
			return nil
		case <-cut:
			return errCutRead
		case <-r.fail:
			return errCutRead
		}
	}
	if r.i >= r.n {
		if r.err != nil {
			return r.err
		}
		return io.EOF
	}
	if r.width > 0 {
		dest[0] = strings.Repeat("x", r.width)
	} else {
		dest[0] = rowText(r.i)
	}
	r.i++
	return nil
}

// inFlight waits until the inner Next has been called n times.
func (r *fakeRows) inFlight(t testing.TB, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return r.next.Load() >= n }, 5*time.Second, time.Millisecond,
		"the inner Next was not called")
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
