package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const declared = " NO SCROLL CURSOR FOR (\nSELECT data FROM docs\n)"

func TestCursorStatementsOfACompleteStream(t *testing.T) {
	d := &fakeDriver{cursorRows: 40}
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
	d := &fakeDriver{cursorRows: 1000}
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
	d := &fakeDriver{cursorRows: 3}
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
	d := &fakeDriver{cursorRows: 2}
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
			d := &fakeDriver{cursorRows: 3, fail: tc.fail}
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
			d := &fakeDriver{cursorRows: 300, fail: map[string]error{stmt: sqlStateErr("08006")}}
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
			assert.Len(t, d.opened(), 2, "the connection was replaced")
		})
	}
}

func TestCursorNeedsExecerAndQueryer(t *testing.T) {
	d := &fakeDriver{newRows: countRows(1), minimal: true}
	db, err := NewConnector(d, WithFetchSize(10))
	require.NoError(t, err)
	sdb := sql.OpenDB(db)
	defer sdb.Close()
	_, err = sdb.Query("SELECT 1")
	assert.ErrorIs(t, err, ErrInvalidOption)
	assert.Contains(t, err.Error(), "WithFetchSize(10): cursor mode needs")
}

func TestCursorStreamArgumentServesOneQuery(t *testing.T) {
	d := &fakeDriver{cursorRows: 1}
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
		d := &fakeDriver{cursorRows: rows, width: width}
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

// TestCursorProbeFailureLeavesStream: when asking the server whether the
// session is in a transaction block fails, nothing of the query ran, so
// its Stream is left for another query.
func TestCursorProbeFailureLeavesStream(t *testing.T) {
	probeErr := sqlStateErr("25P02")
	d := &fakeDriver{cursorRows: 3, fail: map[string]error{"SAVEPOINT": probeErr}}
	db := openScript(t, d, WithFetchSize(5))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, "SET x = 1") // so that the probe is asked
	require.NoError(t, err)

	s := mustStream(t)
	_, err = conn.QueryContext(ctx, "SELECT data FROM docs", s)
	require.ErrorIs(t, err, probeErr)

	d.mu.Lock()
	d.fail = nil
	d.mu.Unlock()
	rows, err := conn.QueryContext(ctx, "SELECT data FROM docs", s)
	require.NoError(t, err, "the Stream is free for another query")
	assert.Equal(t, 3, drainRows(t, rows))
}

// TestCursorFirstFetchClientErrorClosesCursorInCallersTx: when the first
// FETCH fails with an error of the client, which leaves the caller's
// transaction alive, the declared cursor is closed in it, so that the
// transaction goes on without it.
func TestCursorFirstFetchClientErrorClosesCursorInCallersTx(t *testing.T) {
	clientErr := errors.New("fake: cannot decode the batch")
	d := &fakeDriver{cursorRows: 3, fail: map[string]error{"FETCH": clientErr}}
	db := openScript(t, d, WithFetchSize(5))
	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Query("SELECT data FROM docs")
	require.ErrorIs(t, err, clientErr)
	assert.Equal(t, []string{
		"DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 5 FROM jsonstream_cursor_1",
		"CLOSE jsonstream_cursor_1",
	}, d.statements())
	require.NoError(t, tx.Rollback())
}

// TestCursorClaimsStreamOnlyOnceRowsCome: a cursor query that fails leaves
// its Stream argument unclaimed, as the single-statement mode does.
func TestCursorClaimsStreamOnlyOnceRowsCome(t *testing.T) {
	for _, size := range []int{0, 10} {
		t.Run(fetchSizeString(size), func(t *testing.T) {
			// The first statement fails with driver.ErrBadConn, as lib/pq
			// reports a pooled connection whose session the server ended;
			// database/sql retries it on another connection.
			var failed atomic.Bool
			d := &fakeDriver{cursorRows: 3, before: func(string) error {
				if failed.CompareAndSwap(false, true) {
					return driver.ErrBadConn
				}
				return nil
			}}
			c, err := NewConnector(d, WithFetchSize(size))
			require.NoError(t, err)
			db := sql.OpenDB(c)
			defer db.Close()
			s := mustStream(t)
			rows, err := db.Query("SELECT data FROM docs", s)
			require.NoError(t, err, "database/sql retries a bad connection")
			_ = rows.Close()
		})
	}
}

// TestCursorFailedQueryLeavesContextStream: a cursor query that fails does
// not use up the context's Stream.
func TestCursorFailedQueryLeavesContextStream(t *testing.T) {
	for _, size := range []int{0, 10} {
		t.Run(fetchSizeString(size), func(t *testing.T) {
			d := &fakeDriver{newRows: countRows(2)}
			if size != 0 {
				d = &fakeDriver{cursorRows: 2, fail: map[string]error{"BEGIN; DECLARE jsonstream_cursor_1": sqlStateErr("42P01")}}
			}
			c, err := NewConnector(d, WithFetchSize(size))
			require.NoError(t, err)
			db := sql.OpenDB(c)
			db.SetMaxOpenConns(1)
			defer db.Close()
			s := mustStream(t)
			ctx := ContextWithStream(context.Background(), s)
			if size != 0 {
				_, err = db.QueryContext(ctx, "SELECT data FROM nosuchtable")
				require.Error(t, err)
			} else {
				_, err = db.QueryContext(ctx, "fail")
				require.Error(t, err)
			}
			rows, err := db.QueryContext(ctx, "SELECT data FROM docs")
			if assert.NoError(t, err, "a query that fails before returning rows does not use up the Stream") {
				_ = rows.Close()
			}
		})
	}
}

// TestCursorInterruptNeverOutlivesRoundTrip: a Cancel that races the last
// batch's end never leaves a read deadline on the connection that goes
// back to the pool.
func TestCursorInterruptNeverOutlivesRoundTrip(t *testing.T) {
	var atEOF atomic.Pointer[func()] // called once when rows reach their end
	d := &fakeDriver{cursorRows: 5, dialed: true, onNext: func(err error) error {
		if hook := atEOF.Load(); errors.Is(err, io.EOF) && hook != nil && atEOF.CompareAndSwap(hook, nil) {
			(*hook)()
		}
		return err
	}}
	db := openScript(t, d, WithFetchSize(10))

	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		require.True(t, rows.Next())
	}
	sock := d.opened()[0].sock
	canceled := make(chan error, 1)
	cleared := make(chan struct{}, 1)
	sock.notifyCleared(cleared)
	block := make(chan struct{})
	hook := func() {
		// The consumer is inside the last batch's Next, inFlight set:
		// a Cancel comes and its interrupt stalls before SetReadDeadline.
		blocked := make(chan struct{})
		var held atomic.Bool
		sock.setOnDeadline(func(t time.Time) error {
			if !t.IsZero() && held.CompareAndSwap(false, true) {
				close(blocked)
				<-block
			}
			return nil
		})
		go func() { canceled <- s.Cancel() }()
		<-blocked
	}
	atEOF.Store(&hook)
	done := make(chan bool, 1)
	go func() { done <- rows.Next() }()
	select {
	case <-cleared: // finish() cleared the deadline and went on to COMMIT
	case <-time.After(200 * time.Millisecond): // the consumer waits for the interrupt
	}
	close(block) // the stalled interrupt goes on
	require.NoError(t, <-canceled)
	assert.False(t, <-done)
	_ = rows.Close()
	assert.Contains(t, d.statements(), "COMMIT")

	assert.True(t, sock.readDeadline().IsZero(), "connection back in the pool with a read deadline armed (%v)", sock.readDeadline())
	time.Sleep(20 * time.Millisecond)
	rows, err = db.Query("SELECT data FROM docs")
	if assert.NoError(t, err, "the next query on the pooled connection") {
		_ = rows.Close()
	}
}

// TestCursorColumnTypesWithoutInnerInterfaces: over inner rows that
// implement none of the optional column type interfaces (the scripted
// server's FETCH rows), a cursor-backed stream reports what database/sql
// reports for such rows: no length, no nullability, no precision, no type
// name, and a scan type of any.
func TestCursorColumnTypesWithoutInnerInterfaces(t *testing.T) {
	d := &fakeDriver{cursorRows: 3}
	db := openScript(t, d, WithFetchSize(10))
	rows, err := db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.ColumnTypes()
	require.NoError(t, err)
	require.Len(t, cols, 1)
	col := cols[0]

	length, ok := col.Length()
	assert.False(t, ok, "Length reported ok")
	assert.Zero(t, length)
	_, ok = col.Nullable()
	assert.False(t, ok, "Nullable reported ok")
	_, _, ok = col.DecimalSize()
	assert.False(t, ok, "DecimalSize reported ok")
	assert.Empty(t, col.DatabaseTypeName())
	assert.Equal(t, reflect.TypeFor[any](), col.ScanType())
	assert.Equal(t, 3, drainRows(t, rows))
}

// TestCursorTxContextEndStopsNextFetch: between two batches, a
// transaction whose context ended gets no further FETCH: Next fails with
// the context's error. On an inner connection jsonstream did not dial,
// where no watch fails the stream, and at the driver level, where
// database/sql's own watch of the context does not close the rows first.
func TestCursorTxContextEndStopsNextFetch(t *testing.T) {
	d := &fakeDriver{cursorRows: 5}
	s := defaultSettings()
	require.NoError(t, s.apply([]Option{WithFetchSize(2)}))
	inner, err := d.Open("")
	require.NoError(t, err)
	c := newConn(inner, &s, nil)
	txCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx, err := c.BeginTx(txCtx, driver.TxOptions{})
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	dr, err := c.QueryContext(context.Background(), "SELECT data FROM docs", nil)
	require.NoError(t, err)
	defer dr.Close()
	dest := make([]driver.Value, 1)
	for i := 0; i < 2; i++ {
		require.NoError(t, dr.Next(dest))
	}
	cancel()
	assert.ErrorIs(t, dr.Next(dest), context.Canceled)
	assert.Equal(t, []string{
		"DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 2 FROM jsonstream_cursor_1",
	}, d.statements(), "a FETCH after the transaction's context ended")
}

// TestCursorProbesAfterUnwrap: once the inner conn was handed out
// (sql.Conn.Raw), jsonstream asks the server whether a transaction is
// open.
func TestCursorProbesAfterUnwrap(t *testing.T) {
	d := &fakeDriver{cursorRows: 3}
	db := openScript(t, d, WithFetchSize(2))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Raw(func(dc any) error {
		inner := dc.(interface{ Unwrap() driver.Conn }).Unwrap()
		q := dc.(driver.QueryerContext)
		r, err := q.QueryContext(ctx, "SELECT data FROM docs", nil)
		require.NoError(t, err)
		dest := make([]driver.Value, 1)
		for err == nil {
			err = r.Next(dest)
		}
		require.NoError(t, r.Close())

		_, err = inner.(driver.ExecerContext).ExecContext(ctx, "BEGIN", nil)
		require.NoError(t, err)
		d.reset()
		r, err = q.QueryContext(ctx, "SELECT data FROM docs", nil)
		require.NoError(t, err)
		require.NotEqual(t, io.EOF, r.Next(dest))
		require.NoError(t, r.Close())
		return nil
	}))
	assert.NotContains(t, d.statements(), "ROLLBACK", "jsonstream rolled back the caller's transaction: %q", d.statements())
}

// TestCursorNextAfterReleaseReportsFailure: once a failure's release has
// closed the cursor, the cursor's own Next reports the failure, never the
// io.EOF of a stream received whole.
func TestCursorNextAfterReleaseReportsFailure(t *testing.T) {
	d := &fakeDriver{cursorRows: 100}
	db := openScript(t, d, WithFetchSize(10))
	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	defer func() { _ = rows.Close() }()
	for i := 0; i < 3; i++ {
		require.True(t, rows.Next())
	}
	require.NoError(t, s.Pause())
	require.NoError(t, s.Cancel())
	cur := s.bound.Load().cursor
	require.Eventually(t, func() bool {
		return slices.Contains(d.statements(), "ROLLBACK")
	}, 10*time.Second, time.Millisecond, "the release never rolled back")

	err = cur.Next(make([]driver.Value, 1))
	assert.NotEqual(t, io.EOF, err, "a released cursor reported the end of its result")
	assert.ErrorIs(t, err, ErrCanceled)
}

// TestCursorReleaseLeavesCallersBatchToClose: in the caller's transaction
// a failure's release does not read off the batch in flight nor close the
// cursor (reading may take as long as the server does); the consumer's
// Close does both.
func TestCursorReleaseLeavesCallersBatchToClose(t *testing.T) {
	ctx := context.Background()
	d := &fakeDriver{cursorRows: 100}
	db := openScript(t, d, WithFetchSize(10))
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer func() { _ = conn.Close() }()
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)

	s := mustStream(t)
	rows, err := conn.QueryContext(ctx, "SELECT data FROM docs", s)
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		require.True(t, rows.Next())
	}
	d.reset()
	require.NoError(t, s.Cancel())
	// A release of the test's own, after Cancel's, and then the wire once
	// both are done: what either did is in the log.
	cur := s.bound.Load().cursor
	cur.release()
	cur.wire.Lock()
	cur.wire.Unlock() //nolint:staticcheck // waits for a release that held the wire
	assert.Empty(t, d.statements(), "the failure's release ended the cursor in the caller's transaction")

	require.NoError(t, rows.Close())
	assert.Equal(t, []string{"CLOSE jsonstream_cursor_1"}, d.statements(), "Close closes the cursor")
}

// TestCursorInterruptBetweenRoundTripsLeavesSocketAlone: a failure that
// finds no reply pending arms no read deadline, since the consumer's next
// round trip may come after the stream moved on; with a reply pending it
// bounds the read by the drain timeout.
func TestCursorInterruptBetweenRoundTripsLeavesSocketAlone(t *testing.T) {
	fs := newFakeSock()
	s := fs.netConn()
	r := &rows{}
	r.settings.drainTimeout = time.Hour
	cur := &cursor{conn: &conn{sock: s}, r: r}

	cur.interrupt()
	assert.True(t, fs.readDeadline().IsZero(), "deadline armed with no reply pending")
	assert.Zero(t, s.until.Load(), "drain bound set with no reply pending")

	cur.pending(true)
	cur.interrupt()
	assert.False(t, fs.readDeadline().IsZero(), "a pending reply's read is not bounded")
	assert.NotZero(t, s.until.Load())
}

// TestFetchAutoKeepsFirstBatchSizeForWideRows: under FetchAuto, rows so
// wide that autoBatchBytes holds fewer than autoFirstRows of them still
// come autoFirstRows a batch: the byte bound never shrinks a batch below
// the first.
func TestFetchAutoKeepsFirstBatchSizeForWideRows(t *testing.T) {
	d := &fakeDriver{cursorRows: 40, width: 64 << 10}
	db := openScript(t, d, WithFetchSize(FetchAuto))
	rows, err := db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	assert.Equal(t, 40, drainRows(t, rows))
	var fetches []string
	for _, st := range d.statements() {
		if strings.HasPrefix(st, "FETCH") {
			fetches = append(fetches, st)
		}
	}
	assert.Equal(t, []string{
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
		"FETCH FORWARD 16 FROM jsonstream_cursor_1",
	}, fetches)
}

// TestCursorServerErrorInBatchEndsCallersCursor: a server error in a
// batch's rows failed the caller's transaction and the cursor with it:
// Close sends nothing more, and the connection stays for the caller's
// ROLLBACK.
func TestCursorServerErrorInBatchEndsCallersCursor(t *testing.T) {
	ctx := context.Background()
	serverErr := sqlStateErr("40P01")
	// The 8th row of the connection fails with serverErr.
	var seen atomic.Int64
	d := &fakeDriver{cursorRows: 20, onNext: func(err error) error {
		if err == nil && seen.Add(1) == 8 {
			return serverErr
		}
		return err
	}}
	c, err := NewConnector(d, WithFetchSize(5))
	require.NoError(t, err)
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer func() { _ = conn.Close() }()
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)

	rows, err := conn.QueryContext(ctx, "SELECT data FROM docs")
	require.NoError(t, err)
	n := 0
	for rows.Next() {
		n++
	}
	assert.Equal(t, 7, n)
	assert.ErrorIs(t, rows.Err(), serverErr)
	require.NoError(t, rows.Close())
	assert.NotContains(t, d.statements(), "CLOSE jsonstream_cursor_1", "a statement sent into a failed transaction")
	_, err = conn.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err, "the connection is kept")
}

// TestCursorCloseCutOnLastBatchCommits: under CloseCut, a Close whose
// batch in flight turns out to be the last with no row left (a QueryRow,
// a small result) finds the result received whole: jsonstream's
// transaction is committed, not rolled back, and the stream is Complete.
func TestCursorCloseCutOnLastBatchCommits(t *testing.T) {
	d := &fakeDriver{cursorRows: 3, dialed: true}
	db := openScript(t, d, WithFetchSize(5), WithCloseMode(CloseCut))

	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		require.True(t, rows.Next())
	}
	require.NoError(t, rows.Close())
	st := d.statements()
	assert.Equal(t, "COMMIT", st[len(st)-1], "%q", st)
	assert.Equal(t, Complete, s.State())
}

// TestCursorContextEndedAfterDeclareSendsNoFetch: a query whose context
// ends once the cursor is declared fails with the context's error before
// any FETCH is sent, and its transaction is rolled back.
func TestCursorContextEndedAfterDeclareSendsNoFetch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &fakeDriver{cursorRows: 3, after: func(stmt string) {
		if strings.Contains(stmt, "DECLARE") {
			cancel()
		}
	}}
	c, err := NewConnector(d, WithFetchSize(5))
	require.NoError(t, err)
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })

	rows, err := db.QueryContext(ctx, "SELECT data FROM docs")
	if err == nil {
		_ = rows.Close()
	}
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []string{"BEGIN; DECLARE jsonstream_cursor_1" + declared, "ROLLBACK"}, d.statements())
}

// TestCursorCloseCutAfterFullBatchIsNotWhole: under CloseCut, a Close
// after every row of a full batch was read cannot know that the cursor
// has no row left: the stream is not taken for complete, and nothing is
// committed.
func TestCursorCloseCutAfterFullBatchIsNotWhole(t *testing.T) {
	d := &fakeDriver{cursorRows: 10, dialed: true}
	db := openScript(t, d, WithFetchSize(5), WithCloseMode(CloseCut))

	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		require.True(t, rows.Next())
	}
	_ = rows.Close()
	assert.NotContains(t, d.statements(), "COMMIT")
	assert.Equal(t, Closed, s.State())
}

// TestCursorServerErrorInFirstFetchInCallersTx: a server error in the
// first FETCH failed the caller's transaction and the cursor with it: the
// query fails with it, no CLOSE is sent into the failed transaction, and
// the connection is kept for the caller's ROLLBACK.
func TestCursorServerErrorInFirstFetchInCallersTx(t *testing.T) {
	ctx := context.Background()
	fetchErr := sqlStateErr("22012")
	d := &fakeDriver{cursorRows: 10, fail: map[string]error{"FETCH": fetchErr}}
	db := openScript(t, d, WithFetchSize(5))
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer func() { _ = conn.Close() }()
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)

	_, err = conn.QueryContext(ctx, "SELECT data FROM docs")
	require.ErrorIs(t, err, fetchErr)
	assert.NotContains(t, d.statements(), "CLOSE jsonstream_cursor_1")
	_, err = conn.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err, "the connection is kept")
}
