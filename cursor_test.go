package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stateError is a server error with a SQLSTATE, as *pq.Error is.
type sqlStateErr string

func (e sqlStateErr) Error() string    { return "server: " + string(e) }
func (e sqlStateErr) SQLState() string { return string(e) }

// scriptDB is an inner driver that plays a server holding one cursor of
// `rows` rows per query, and logs every statement jsonstream sends. fail
// maps a statement prefix to the error it gets.
type scriptDB struct {
	mu    sync.Mutex // guards all below
	log   []string
	fail  map[string]error
	rows  int
	width int // bytes per row value
	opens int
	inTx  bool // the session is in a transaction block
}

func (d *scriptDB) Open(string) (driver.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.opens++
	return &scriptConn{d: d}, nil
}

func (d *scriptDB) Connect(context.Context) (driver.Conn, error) { return d.Open("") }
func (d *scriptDB) Driver() driver.Driver                        { return d }

func (d *scriptDB) statements() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

func (d *scriptDB) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = nil
}

type scriptConn struct {
	d    *scriptDB
	left int // rows left in the open cursor
}

func (c *scriptConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("no Prepare") }
func (c *scriptConn) Close() error                        { return nil }
func (c *scriptConn) Begin() (driver.Tx, error)           { return scriptTx{}, nil }

type scriptTx struct{}

func (scriptTx) Commit() error   { return nil }
func (scriptTx) Rollback() error { return nil }

func (c *scriptConn) run(stmt string) error {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, stmt)
	for prefix, err := range d.fail {
		if strings.HasPrefix(stmt, prefix) {
			return err
		}
	}
	switch {
	case strings.HasPrefix(stmt, "SAVEPOINT"):
		if !d.inTx {
			return sqlStateErr("25P01")
		}
	case strings.HasPrefix(stmt, "BEGIN"):
		d.inTx = true
	case stmt == "COMMIT", stmt == "ROLLBACK":
		d.inTx = false
	}
	if strings.Contains(stmt, "DECLARE") {
		c.left = d.rows
	}
	return nil
}

func (c *scriptConn) ExecContext(_ context.Context, query string, _ []driver.NamedValue) (driver.Result, error) {
	if err := c.run(query); err != nil {
		return nil, err
	}
	return driver.RowsAffected(0), nil
}

func (c *scriptConn) QueryContext(_ context.Context, query string, _ []driver.NamedValue) (driver.Rows, error) {
	if err := c.run(query); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(query, "FETCH FORWARD ") {
		return &fakeRows{n: 1}, nil
	}
	n, err := strconv.Atoi(strings.Fields(query)[2])
	if err != nil {
		return nil, err
	}
	n = min(n, c.left)
	c.left -= n
	return &widthRows{n: n, width: c.d.width}, nil
}

// widthRows yields n rows of one value width bytes long.
type widthRows struct{ n, width, i int }

func (r *widthRows) Columns() []string { return []string{"data"} }
func (r *widthRows) Close() error      { return nil }
func (r *widthRows) Next(dest []driver.Value) error {
	if r.i >= r.n {
		return io.EOF
	}
	r.i++
	dest[0] = strings.Repeat("x", r.width)
	return nil
}

func openScript(t *testing.T, d *scriptDB, opts ...Option) *sql.DB {
	t.Helper()
	c, err := NewConnector(d, opts...)
	require.NoError(t, err)
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func drainRows(t *testing.T, rows *sql.Rows) int {
	t.Helper()
	n := 0
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	return n
}

const declared = " NO SCROLL CURSOR FOR (\nSELECT data FROM docs\n)"

func TestCursorStatementsOfACompleteStream(t *testing.T) {
	d := &scriptDB{rows: 40}
	db := openScript(t, d, WithFetchSize(16))
	rows, err := db.Query("SELECT data FROM docs;")
	require.NoError(t, err)
	assert.Equal(t, 40, drainRows(t, rows))
	assert.Equal(t, []string{
		"BEGIN; DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
		"COMMIT",
	}, d.statements(), "one round trip to begin and declare; a short batch ends it")
}

func TestCursorEarlyCloseRollsBackAndSkipsTheProbeNextTime(t *testing.T) {
	d := &scriptDB{rows: 1000}
	db := openScript(t, d, WithFetchSize(10))
	rows, err := db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	rows, err = db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	require.NoError(t, rows.Close())
	assert.Equal(t, []string{
		"BEGIN; DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 10 FROM jsonstream_cursor_1",
		"ROLLBACK",
		// jsonstream ended its own transaction: no need to ask the server.
		"BEGIN; DECLARE jsonstream_cursor_2" + declared,
		"FETCH FORWARD 10 FROM jsonstream_cursor_2",
		"ROLLBACK",
	}, d.statements())
}

func TestCursorProbesAfterOtherStatements(t *testing.T) {
	d := &scriptDB{rows: 3}
	db := openScript(t, d, WithFetchSize(10))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()

	_, err = conn.ExecContext(ctx, "SET work_mem = '64MB'")
	require.NoError(t, err)
	rows, err := conn.QueryContext(ctx, "SELECT data FROM docs", 7)
	require.NoError(t, err)
	assert.Equal(t, 3, drainRows(t, rows))
	assert.Equal(t, []string{
		"SET work_mem = '64MB'",
		"SAVEPOINT jsonstream_probe; RELEASE SAVEPOINT jsonstream_probe",
		"BEGIN",
		"DECLARE jsonstream_cursor_1" + declared, // with its argument: a statement of its own
		"FETCH FORWARD 10 FROM jsonstream_cursor_1",
		"COMMIT",
	}, d.statements(), "outside a transaction block the probe fails with 25P01")

	d.reset()
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)
	rows, err = conn.QueryContext(ctx, "SELECT data FROM docs")
	require.NoError(t, err)
	assert.Equal(t, 3, drainRows(t, rows))
	rows, err = conn.QueryContext(ctx, "SELECT data FROM docs")
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Equal(t, []string{
		"BEGIN",
		"SAVEPOINT jsonstream_probe; RELEASE SAVEPOINT jsonstream_probe",
		"DECLARE jsonstream_cursor_2" + declared,
		"FETCH FORWARD 10 FROM jsonstream_cursor_2",
		"CLOSE jsonstream_cursor_2",
		"SAVEPOINT jsonstream_probe; RELEASE SAVEPOINT jsonstream_probe",
		"DECLARE jsonstream_cursor_3" + declared,
		"FETCH FORWARD 10 FROM jsonstream_cursor_3",
		"CLOSE jsonstream_cursor_3",
	}, d.statements(), "inside the caller's transaction: never COMMIT or ROLLBACK")
}

func TestCursorInsideBeginTxNeedsNoProbe(t *testing.T) {
	d := &scriptDB{rows: 2}
	db := openScript(t, d, WithFetchSize(10))
	tx, err := db.Begin()
	require.NoError(t, err)
	rows, err := tx.Query("SELECT data FROM docs")
	require.NoError(t, err)
	assert.Equal(t, 2, drainRows(t, rows))
	require.NoError(t, tx.Rollback())
	assert.Equal(t, []string{
		"DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 10 FROM jsonstream_cursor_1",
		"CLOSE jsonstream_cursor_1",
	}, d.statements())
}

func TestCursorStartFailures(t *testing.T) {
	probeErr := sqlStateErr("25P02")
	for name, tc := range map[string]struct {
		fail     map[string]error
		afterSet bool // a statement ran before, so the probe is asked
		want     error
		log      []string
	}{
		"probe fails otherwise": {
			fail: map[string]error{"SAVEPOINT": probeErr}, afterSet: true, want: probeErr,
			log: []string{"SAVEPOINT jsonstream_probe; RELEASE SAVEPOINT jsonstream_probe"},
		},
		"declare refused": {
			fail: map[string]error{"BEGIN; DECLARE": sqlStateErr("0A000")}, want: ErrCursorQuery,
			log: []string{"BEGIN; DECLARE jsonstream_cursor_1" + declared, "ROLLBACK"},
		},
		"declare syntax error": {
			fail: map[string]error{"BEGIN; DECLARE": sqlStateErr("42601")}, want: sqlStateErr("42601"),
			log: []string{"BEGIN; DECLARE jsonstream_cursor_1" + declared, "ROLLBACK"},
		},
		"declare fails otherwise": {
			fail: map[string]error{"BEGIN; DECLARE": sqlStateErr("42P01")}, want: sqlStateErr("42P01"),
			log: []string{"BEGIN; DECLARE jsonstream_cursor_1" + declared, "ROLLBACK"},
		},
		"first fetch fails": {
			fail: map[string]error{"FETCH": sqlStateErr("22012")}, want: sqlStateErr("22012"),
			log: []string{"BEGIN; DECLARE jsonstream_cursor_1" + declared, "FETCH FORWARD 5 FROM jsonstream_cursor_1", "ROLLBACK"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := &scriptDB{rows: 3, fail: tc.fail}
			db := openScript(t, d, WithFetchSize(5))
			ctx := context.Background()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			if tc.afterSet {
				_, err = conn.ExecContext(ctx, "SET x = 1")
				require.NoError(t, err)
				d.reset()
			}
			_, err = conn.QueryContext(ctx, "SELECT data FROM docs")
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.want)
			if errors.Is(tc.want, ErrCursorQuery) {
				assert.ErrorIs(t, err, sqlStateErr("0A000"), "the server's error is wrapped")
			} else {
				assert.Equal(t, tc.want, err, "passed on unchanged")
			}
			assert.Equal(t, tc.log, d.statements())
		})
	}
}

// TestCursorFailedEndDiscardsTheConnection: when jsonstream cannot end
// its transaction, the session is in an unknown state and never reused.
func TestCursorFailedEndDiscardsTheConnection(t *testing.T) {
	for _, stmt := range []string{"ROLLBACK", "COMMIT"} {
		t.Run(stmt, func(t *testing.T) {
			d := &scriptDB{rows: 300, fail: map[string]error{stmt: sqlStateErr("08006")}}
			db := openScript(t, d, WithFetchSize(100))
			// A full batch, so an early close cannot tell it was the last.
			rows, err := db.Query("SELECT data FROM docs")
			require.NoError(t, err)
			if stmt == "COMMIT" {
				for rows.Next() {
				}
				assert.ErrorIs(t, rows.Err(), sqlStateErr("08006"))
			} else {
				require.True(t, rows.Next())
				assert.ErrorIs(t, rows.Close(), sqlStateErr("08006"))
			}
			_ = rows.Close()
			rows, err = db.Query("SELECT data FROM docs")
			require.NoError(t, err)
			_ = rows.Close()
			assert.Equal(t, 2, d.opens, "the connection was replaced")
		})
	}
}

func TestCursorNeedsExecerAndQueryer(t *testing.T) {
	d := &fakeDriver{newRows: countRows(1), minimal: true}
	db, err := NewConnector(fakeConnector{d}, WithFetchSize(10))
	require.NoError(t, err)
	sdb := sql.OpenDB(db)
	defer sdb.Close()
	_, err = sdb.Query("SELECT 1")
	assert.ErrorIs(t, err, ErrInvalidOption)
	assert.Contains(t, err.Error(), "WithFetchSize(10): cursor mode needs")
}

func TestCursorStreamArgumentServesOneQuery(t *testing.T) {
	d := &scriptDB{rows: 1}
	db := openScript(t, d)
	s := mustStream(t, WithFetchSize(4))
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	assert.Equal(t, 1, drainRows(t, rows))
	d.reset()
	_, err = db.Query("SELECT data FROM docs", s)
	assert.ErrorIs(t, err, ErrStreamArgument)
	assert.Empty(t, d.statements(), "nothing ran for the reused Stream")
}

// TestFetchAutoBatches: FetchAuto starts small and doubles, up to the
// row bound, and holds a batch to about autoBatchBytes of values.
func TestFetchAutoBatches(t *testing.T) {
	sizes := func(width, rows int) []int {
		d := &scriptDB{rows: rows, width: width}
		db := openScript(t, d, WithFetchSize(FetchAuto))
		r, err := db.Query("SELECT data FROM docs")
		require.NoError(t, err)
		assert.Equal(t, rows, drainRows(t, r))
		var out []int
		for _, st := range d.statements() {
			if f := strings.Fields(st); f[0] == "FETCH" {
				n, _ := strconv.Atoi(f[2])
				out = append(out, n)
			}
		}
		return out
	}
	assert.Equal(t, []int{16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 8192},
		sizes(10, 16+32+64+128+256+512+1024+2048+4096+8192+100), "small rows: up to autoMaxRows")
	assert.Equal(t, []int{16, 32, 64, 128, 256, 256, 256},
		sizes(1024, 16+32+64+128+256+256+10), "1 KiB rows: about 256 KiB a batch")
	assert.Equal(t, []int{16}, sizes(10, 3), "a short first batch ends it")
}
