package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// closeBound is a loose bound for an early Close. The benchmarks measure
// it (milliseconds); this only has to tell a cut from a drain of a
// million rows, which takes over a second.
const closeBound = 500 * time.Millisecond

func TestEarlyCloseStopsServerQuery(t *testing.T) {
	db := openPG(t, DriverName, "")
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)

	rows, err := conn.QueryContext(context.Background(), bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	start := time.Now()
	require.NoError(t, rows.Close())
	took := time.Since(start)
	t.Logf("Close after 1 of 1,000,000 rows took %v", took)
	assert.Less(t, took, closeBound)
	requireBackendStops(t, monitor, pid)

	_ = conn.Close()
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the next query succeeds")
}

func TestEarlyCloseModes(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		dsn      string
		keepConn bool
	}{
		{"jsonstream_close=drain", true},
		{"jsonstream_close=cut", false},
		{"jsonstream_close=auto", false},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			db := openPG(t, DriverName, singleDSN+" "+tc.dsn)
			db.SetMaxOpenConns(1)
			var pid1, pid2 int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid1))
			rows, err := db.Query(bigQuery, 200_000)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid2))
			assert.Equal(t, tc.keepConn, pid1 == pid2, "connection kept")
		})
	}
}

// TestQueryRowKeepsConnection: QueryRow closes its rows after one row,
// before seeing the end. CloseAuto drains that small remainder instead of
// cutting, so the connection is reused.
func TestQueryRowKeepsConnection(t *testing.T) {
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	var first int
	require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&first))
	for i := 0; i < 200; i++ {
		var pid int
		require.NoError(t, db.QueryRow("SELECT pg_backend_pid() FROM generate_series(1, 3)").Scan(&pid))
		require.Equal(t, first, pid, "round %d: QueryRow cost the connection", i)
	}
}

// TestEarlyCloseRounds: many early closes in a row keep the pool within
// its limit and never cancel a later query (jsonstream sends no cancel
// request, so none can arrive late).
func TestEarlyCloseRounds(t *testing.T) {
	needRowsTable(t)
	rounds := 1000
	if testing.Short() {
		rounds = 200
	}
	db := openPG(t, DriverName, "application_name=early_close_rounds")
	monitor := openPG(t, "postgres", "")
	db.SetMaxOpenConns(4)
	var canceled, maxOpen, maxServer int
	for i := 0; i < rounds; i++ {
		rows, err := db.Query(bigQuery, 100_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		var n int
		err = db.QueryRow("SELECT count(*) FROM generate_series(1, 100)").Scan(&n)
		var pqErr *pq.Error
		if errors.As(err, &pqErr) && pqErr.Code == "57014" {
			canceled++
			continue
		}
		require.NoError(t, err)
		maxOpen = max(maxOpen, db.Stats().OpenConnections)
		if i%100 == 0 {
			var server int
			require.NoError(t, monitor.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'early_close_rounds'`).Scan(&server))
			maxServer = max(maxServer, server)
		}
	}
	t.Logf("%d rounds: %d canceled, at most %d open connections, %d server backends", rounds, canceled, maxOpen, maxServer)
	assert.Zero(t, canceled, "a cancel reached a later query")
	assert.LessOrEqual(t, maxOpen, 4)
	assert.LessOrEqual(t, maxServer, 4)
}

func TestContextCancelMidStream(t *testing.T) {
	db := openPG(t, DriverName, "")
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows, err := conn.QueryContext(ctx, bigQuery, bigRows)
	require.NoError(t, err)
	for i := 0; i < 1000; i++ {
		require.True(t, rows.Next())
	}
	cancel()
	for rows.Next() {
	}
	assert.ErrorIs(t, rows.Err(), context.Canceled)
	requireBackendStops(t, monitor, pid)
	_ = rows.Close()
	_ = conn.Close()
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one))
}

func TestServerErrorMidStream(t *testing.T) {
	db := openPG(t, DriverName, "")
	s := mustStream(t)
	rows, err := db.Query(`SELECT CASE WHEN g = 500000 THEN 1/(g - g) ELSE g END FROM generate_series(1, 1000000) g`, s)
	require.NoError(t, err)
	n := 0
	for rows.Next() {
		n++
	}
	pqErr, ok := rows.Err().(*pq.Error) //nolint:errorlint // unchanged, so the direct assertion works
	require.True(t, ok, "got %T %v", rows.Err(), rows.Err())
	assert.Equal(t, pqerror.DivisionByZero, pqErr.Code)
	assert.Equal(t, Failed, s.State())
	require.NoError(t, rows.Close())
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one))
}

func TestBackendTerminatedMidStream(t *testing.T) {
	db := openPG(t, DriverName, "")
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)
	rows, err := conn.QueryContext(context.Background(), bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	_, err = monitor.Exec("SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	start := time.Now()
	done := make(chan struct{})
	go func() { // reads the rest; the termination must end it
		defer close(done)
		for rows.Next() {
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Next hangs after the backend was terminated")
	}
	t.Logf("the stream ended %v after pg_terminate_backend", time.Since(start))
	assert.Error(t, rows.Err())
	_ = rows.Close()
	_ = conn.Close()
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the next query succeeds")
}

func TestServerRestartBetweenQueries(t *testing.T) {
	srv := pgtest.Shared(t)
	db, err := sql.Open(DriverName, srv.DSN())
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxIdleConns(4)
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one))
	require.NoError(t, srv.Restart())
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool recovers on the next query")
}

// stallProxy forwards TCP between the client and the server until stall
// is called; from then on it forwards nothing in either direction.
type stallProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
	// delay holds each chunk for a while before passing it on: a network
	// whose round trips cost.
	delay  atomic.Int64
	wg     sync.WaitGroup // the accept loop and the copiers; close waits for them
	mu     sync.Mutex     // guards conns and closed
	conns  []net.Conn
	closed bool
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &stallProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed { // accepted just before close: drop it
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

// pipe copies until an error, or holds still once stalled.
func (p *stallProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		if p.stalled.Load() {
			_, _ = io.Copy(io.Discard, &stalledReader{p})
			return
		}
		n, err := src.Read(buf)
		if d := time.Duration(p.delay.Load()); n > 0 && d > 0 {
			time.Sleep(d)
		}
		if n > 0 && !p.stalled.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// stalledReader blocks until the proxy closes.
type stalledReader struct{ p *stallProxy }

func (r *stalledReader) Read([]byte) (int, error) {
	for {
		r.p.mu.Lock()
		closed := r.p.closed
		r.p.mu.Unlock()
		if closed {
			return 0, io.EOF
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *stallProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *stallProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func TestNetworkStall(t *testing.T) {
	needRowsTable(t)
	srv := pgtest.Shared(t)
	// In cursor mode the stall meets a FETCH in flight, whose read the
	// failure bounds by the drain timeout before it cuts.
	for _, mode := range []string{singleDSN, "jsonstream_fetch_size=100", ""} {
		t.Run("mode="+mode, func(t *testing.T) { networkStall(t, srv, mode) })
	}
}

func networkStall(t *testing.T, srv *pgtest.Server, mode string) {
	proxyDSN := func(p *stallProxy) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable %s", p.port(), mode)
	}
	t.Run("context deadline ends Next", func(t *testing.T) {
		p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port()))
		db, err := sql.Open(DriverName, proxyDSN(p))
		require.NoError(t, err)
		defer db.Close()
		db.SetMaxOpenConns(1)
		require.NoError(t, db.Ping()) // the deadline meets the stall, not the dial and the login
		const deadline = time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		rows, err := db.QueryContext(ctx, bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		p.stalled.Store(true)
		for rows.Next() {
		}
		took := time.Since(start)
		t.Logf("Next ended %v after the query started (deadline %v)", took, deadline)
		assert.ErrorIs(t, rows.Err(), context.DeadlineExceeded)
		assert.Less(t, took, deadline+time.Second, "Next waited on the stalled network")
		_ = rows.Close()
	})
	t.Run("pause timeout still fires", func(t *testing.T) {
		p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port()))
		db, err := sql.Open(DriverName, proxyDSN(p))
		require.NoError(t, err)
		defer db.Close()
		s := mustStream(t, WithPauseTimeout(200*time.Millisecond))
		rows, err := db.Query(bigQuery, bigRows, s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		p.stalled.Store(true)
		require.NoError(t, s.Pause())
		start := time.Now()
		assert.False(t, rows.Next())
		assert.ErrorIs(t, rows.Err(), ErrPauseTimeout)
		bound := 200*time.Millisecond + wake
		if mode != singleDSN {
			// database/sql closes the failed rows inside Next: the
			// cursor's or portal's end then waits for the dead network as
			// long as failedEndTimeout.
			bound += failedEndTimeout
		}
		assert.Less(t, time.Since(start), bound)
		closed := make(chan error, 1)
		go func() { closed <- rows.Close() }()
		select {
		case err := <-closed:
			assert.NoError(t, err, "Close after the cut")
		case <-time.After(2 * time.Second):
			t.Fatal("Close hangs on a stalled network after the pause timeout")
		}
	})
}

// TestEarlyCloseInTransaction: cutting the connection would end the
// transaction, so inside one Close drains, as lib/pq does, and the
// transaction goes on.
func TestEarlyCloseInTransaction(t *testing.T) {
	needRowsTable(t)
	both(t, func(t *testing.T, db *sql.DB) []any {
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		_, err = tx.Exec("CREATE TEMP TABLE early_close_tx (a int)")
		require.NoError(t, err)
		var g int
		var pad string
		require.NoError(t, tx.QueryRow(bigQuery, 200_000).Scan(&g, &pad)) // closes after one row
		rows, err := tx.Query(bigQuery, 200_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		_, err = tx.Exec("INSERT INTO early_close_tx VALUES (1)")
		require.NoError(t, err, "the transaction must survive an early Close")
		var n int
		require.NoError(t, tx.QueryRow("SELECT count(*) FROM early_close_tx").Scan(&n))
		require.NoError(t, tx.Commit())
		return []any{g, n}
	})
}

// TestQueryRowIsComplete: a result received whole is Complete however it
// was closed. QueryRow reads one row and closes the rows without reading
// to the end; the rest of its result is only the server's end of it, so
// its stream ends Complete with OutcomeComplete, in every stream mode and
// close mode, and the connection serves the next query (CloseCut
// included: nothing was left to cut).
func TestQueryRowIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		for _, closeMode := range closeModesDSN {
			t.Run("mode="+mode+"/"+closeMode, func(t *testing.T) {
				db := openPG(t, DriverName, mode+" "+closeMode)
				db.SetMaxOpenConns(1)
				before := pidOf(t, db)
				for _, query := range []string{
					"SELECT 1",
					"SELECT g FROM generate_series(1, 1) g",
					"SELECT repeat('x', 100000)", // a row larger than one read
				} {
					rec := &recorder{}
					s := mustStream(t, WithObserver(rec))
					var v string
					require.NoError(t, db.QueryRow(query, s).Scan(&v))
					assert.Equal(t, Complete, s.State(), "%s", query)
					end := rec.ended(t)
					assert.Equal(t, OutcomeComplete, end.Outcome, "%s", query)
					assert.False(t, end.ConnCut, "%s", query)
					assert.Equal(t, before, pidOf(t, db), "%s: the connection was cut", query)
				}
				sessionClean(t, db)
			})
		}
	}
}

// TestCloseAfterTheLastRowIsComplete: a consumer that reads every row it
// wants, the last one included, and closes without asking for more, has
// received the whole result: Complete. One row left unread makes it an
// early Close: Closed, with the outcome of the mode.
func TestCloseAfterTheLastRowIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			db.SetMaxOpenConns(1)
			for _, tc := range []struct {
				read  int
				state State
			}{
				{read: 3, state: Complete},
				{read: 2, state: Closed},
				{read: 0, state: Closed},
			} {
				rec := &recorder{}
				s := mustStream(t, WithObserver(rec))
				rows, err := db.Query("SELECT g FROM generate_series(1, 3) g", s)
				require.NoError(t, err)
				for i := 0; i < tc.read; i++ {
					require.True(t, rows.Next())
				}
				require.NoError(t, rows.Close())
				assert.Equal(t, tc.state, s.State(), "read %d of 3", tc.read)
				end := rec.ended(t)
				if tc.state == Complete {
					assert.Equal(t, OutcomeComplete, end.Outcome)
				} else {
					assert.NotEqual(t, OutcomeComplete, end.Outcome, "read %d of 3", tc.read)
				}
			}
		})
	}
}

// TestCloseOfEmptyResultIsComplete: an empty result closed without a
// single Next was received whole.
func TestCloseOfEmptyResultIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			s := mustStream(t)
			rows, err := db.Query("SELECT 1 WHERE false", s)
			require.NoError(t, err)
			require.NoError(t, rows.Close())
			assert.Equal(t, Complete, s.State())
		})
	}
}

// TestCloseWithNextResultSetIsNotComplete: a multi-statement query whose
// first result set was read to its last row still has a result set to
// come: its Close is an early one.
func TestCloseWithNextResultSetIsNotComplete(t *testing.T) {
	db := openPG(t, DriverName, "jsonstream_close=drain")
	s := mustStream(t)
	rows, err := db.Query("SELECT 1; SELECT 2", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Equal(t, Closed, s.State())
}

// TestConnCutErrorSaysWhy: a sql.Conn whose connection a stream cut (an
// early Close under CloseCut) answers its next statement, whatever it
// is, with ErrConnCut, which wraps driver.ErrBadConn, before sending
// anything; database/sql then discards the connection, and the pool
// serves the next query on a new one.
func TestConnCutErrorSaysWhy(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_close=cut")
	ctx := context.Background()
	for name, use := range map[string]func(*sql.Conn) error{
		"Query": func(c *sql.Conn) error {
			var one int
			return c.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		},
		"Exec": func(c *sql.Conn) error {
			_, err := c.ExecContext(ctx, "SELECT 1")
			return err
		},
		"BeginTx": func(c *sql.Conn) error {
			_, err := c.BeginTx(ctx, nil)
			return err
		},
		"Prepare": func(c *sql.Conn) error {
			_, err := c.PrepareContext(ctx, "SELECT 1")
			return err
		},
		"Ping": func(c *sql.Conn) error { return c.PingContext(ctx) },
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			rows, err := conn.QueryContext(ctx, bigQuery, bigRows)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())

			err = use(conn)
			require.ErrorIs(t, err, ErrConnCut)
			assert.ErrorIs(t, err, driver.ErrBadConn)
			assert.Contains(t, err.Error(), "cut to end a stream")
			assert.ErrorIs(t, conn.Close(), sql.ErrConnDone, "database/sql kept the connection")
			var one int
			require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
		})
	}
}

// An early Close stops a read, never a write: a statement that changes
// data ends as lib/pq ends it, read to its end and committed, whatever
// the close mode.

// writeStatements change 200,000 rows of close_writes, far more than a
// drain timeout's worth.
var writeStatements = []string{
	"INSERT INTO close_writes SELECT g FROM generate_series(200001, 400000) g RETURNING x, repeat('x', 100)",
	"UPDATE close_writes SET x = x + 1000000 RETURNING x, repeat('x', 100)",
	"DELETE FROM close_writes WHERE x > 0 RETURNING x, repeat('x', 100)",
	"WITH d AS (DELETE FROM close_writes RETURNING x) SELECT x, repeat('x', 100) FROM d",
	"with u as (update close_writes set x = -x returning x) select x, repeat('x', 100) from u",
	// An UPDATE after a word that reads as the start of a lock (FOR, KEY)
	// with other tokens between them.
	"WITH p AS (SELECT x AS key FROM close_writes ORDER BY key) UPDATE close_writes SET x = x + 1000000 FROM p WHERE close_writes.x = p.key RETURNING close_writes.x, repeat('x', 100)",
	"WITH s AS (SELECT substring('abc' FROM 1 FOR 2)) UPDATE close_writes SET x = x + 1000000 FROM s RETURNING x, repeat('x', 100)",
}

// tableAfter runs query on db, reads one row, closes the rows and
// returns the table's row count and sum.
func tableAfter(t *testing.T, db *sql.DB, query string, args ...any) [2]int64 {
	t.Helper()
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE TABLE IF NOT EXISTS close_writes (x bigint);
		TRUNCATE close_writes; INSERT INTO close_writes SELECT g FROM generate_series(1, 200000) g`)
	require.NoError(t, err)
	rows, err := db.Query(query, args...)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	var st [2]int64
	require.NoError(t, setup.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM close_writes").Scan(&st[0], &st[1]))
	return st
}

func TestEarlyCloseNeverCutsAWrite(t *testing.T) {
	// A write after a read in the same text is a write too: lib/pq runs
	// the text's statements one after the other, and drains the read.
	several := "SELECT x, repeat('x', 100) FROM close_writes; DELETE FROM close_writes WHERE x > 100000"
	for _, q := range append([]string{several}, writeStatements...) {
		t.Run(q, func(t *testing.T) {
			want := tableAfter(t, openPG(t, "postgres", ""), q)
			for _, mode := range []CloseMode{CloseAuto, CloseCut} {
				got := tableAfter(t, openPG(t, DriverName, ""), q, mustStream(t, WithCloseMode(mode)))
				assert.Equal(t, want, got, "%s: the early Close changed what the statement wrote", mode)
			}
		})
	}
}

// TestEarlyCloseOfLockingReadInTx: a SELECT … FOR UPDATE (or FOR SHARE)
// closed after one row in the caller's transaction leaves every row it
// selects locked, as lib/pq's drain does, in every mode and close mode:
// the server locks a row as it runs past it, so a portal runs the rest
// of the statement, and a cursor moves past its last row. Another session
// then finds the last row locked.
func TestEarlyCloseOfLockingReadInTx(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE TABLE IF NOT EXISTS lock_rows (id int PRIMARY KEY);
		TRUNCATE lock_rows; INSERT INTO lock_rows SELECT g FROM generate_series(1, 1000) g`)
	require.NoError(t, err)
	lastLocked := func(t *testing.T, lock string) bool {
		t.Helper()
		_, err := setup.Exec("SELECT id FROM lock_rows WHERE id = 1000 FOR " + lock + " NOWAIT")
		if err == nil {
			return false
		}
		require.Equal(t, "55P03", sqlState(err), "%v", err)
		return true
	}
	ctx := context.Background()
	for _, c := range []struct{ driver, mode string }{
		{"postgres", ""}, {DriverName, ""}, {DriverName, singleDSN}, {DriverName, "jsonstream_fetch_size=10"},
	} {
		for _, where := range []string{"BeginTx", "Exec(BEGIN)"} {
			for _, lock := range []string{"UPDATE", "SHARE"} {
				t.Run(c.driver+"/"+c.mode+"/"+where+"/"+lock, func(t *testing.T) {
					for _, mode := range []CloseMode{CloseAuto, CloseCut} {
						db := openPG(t, c.driver, c.mode)
						conn, err := db.Conn(ctx)
						require.NoError(t, err)
						q, tx := enterTx(t, conn, where)
						args := []any{}
						if c.driver == DriverName {
							args = append(args, mustStream(t, WithCloseMode(mode)))
						}
						rows, err := q.QueryContext(ctx, "SELECT id FROM lock_rows ORDER BY id FOR "+lock, args...)
						require.NoError(t, err)
						require.True(t, rows.Next())
						require.NoError(t, rows.Close())
						want := "UPDATE" // a FOR SHARE lock keeps out FOR UPDATE
						assert.True(t, lastLocked(t, want), "%s: the last row is not locked", mode)
						commitTx(t, conn, tx, where)
						assert.False(t, lastLocked(t, want), "the lock outlived the transaction")
						require.NoError(t, conn.Close())
					}
				})
			}
		}
	}
}

// TestEarlyCloseCutsARead: the same table read with a SELECT is cut (the
// connection's server process is replaced), so the rule above is not a
// drain of everything.
func TestEarlyCloseCutsARead(t *testing.T) {
	db := openPG(t, DriverName, singleDSN)
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	tableAfter(t, db, "SELECT x FROM close_writes, generate_series(1, 10)")
	assert.NotEqual(t, before, pidOf(t, db), "the read was cut")
}

// TestEarlyCloseOfWritingFunction pins the documented exception: a SELECT
// that calls a function that writes is a read to jsonstream, which cannot
// see into the function. An early Close with rows left stops it, and what
// the function wrote is rolled back with it (a cut in the single-statement
// mode, a ROLLBACK in the portal mode); a result received whole
// (QueryRow) commits; CloseDrain ends it as lib/pq does. What no
// rollback undoes, a sequence's nextval, stays as far as it ran.
func TestEarlyCloseOfWritingFunction(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE TABLE IF NOT EXISTS close_writes (x bigint);
		CREATE OR REPLACE FUNCTION close_writes_log(v bigint) RETURNS bigint
		LANGUAGE sql AS 'INSERT INTO close_writes VALUES (-v) RETURNING v'`)
	require.NoError(t, err)
	const q = "SELECT close_writes_log(g) FROM generate_series(1, 200000) g"
	want := tableAfter(t, openPG(t, "postgres", ""), q)
	assert.Equal(t, int64(400000), want[0], "lib/pq lets it finish")
	for _, mode := range []string{"", portalDSN} {
		t.Run("mode="+mode, func(t *testing.T) {
			stopped := tableAfter(t, openPG(t, DriverName, mode), q)
			assert.Equal(t, int64(200000), stopped[0], "an early Close stops the SELECT and what it wrote")
			drained := tableAfter(t, openPG(t, DriverName, mode), q, mustStream(t, WithCloseMode(CloseDrain)))
			assert.Equal(t, want, drained, "CloseDrain: as lib/pq")
			one := tableAfter(t, openPG(t, DriverName, mode), "SELECT close_writes_log(7)")
			assert.Equal(t, int64(200001), one[0], "a result received whole commits")
		})
	}
	// What no transaction undoes stays: a sequence has advanced as far as
	// the rows that ran before the stop, where lib/pq's drain runs them all.
	for _, mode := range []string{"", portalDSN} {
		t.Run("sequence/mode="+mode, func(t *testing.T) {
			_, err := setup.Exec("DROP SEQUENCE IF EXISTS close_seq; CREATE SEQUENCE close_seq")
			require.NoError(t, err)
			const rows = 1_000_000 // far more than a socket's buffers hold
			r, err := openPG(t, DriverName, mode).Query(fmt.Sprintf("SELECT nextval('close_seq') FROM generate_series(1, %d)", rows))
			require.NoError(t, err)
			require.True(t, r.Next())
			require.NoError(t, r.Close())
			var last int64
			require.NoError(t, setup.QueryRow("SELECT last_value FROM close_seq").Scan(&last))
			assert.Positive(t, last, "the rows that ran advanced the sequence: no rollback undoes it")
			assert.Less(t, last, int64(rows), "the stop came before the end")
		})
	}
}

// The server-side counterparts of the branch tests in rows_test.go:
// behaviours that are about what the server and lib/pq do, pinned against
// PostgreSQL.

// TestNetworkStallInTransaction: database/sql ends a transaction's rows
// when the transaction's context ends, but cannot reach a Next stuck on a
// stalled network; the cut must free it as promptly as it does for the
// query's own context (TestNetworkStall).
func TestNetworkStallInTransaction(t *testing.T) {
	needRowsTable(t)
	srv := pgtest.Shared(t)
	p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port()))
	db, err := sql.Open(DriverName, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port()))
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxOpenConns(1)
	require.NoError(t, db.Ping()) // the deadline meets the stall, not the dial and the login

	const deadline = time.Second
	txCtx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	tx, err := db.BeginTx(txCtx, nil)
	require.NoError(t, err)
	defer tx.Rollback()                                                   //nolint:errcheck // the context ended it already
	rows, err := tx.QueryContext(context.Background(), bigQuery, bigRows) // a context that never ends
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	p.stalled.Store(true)
	done := make(chan struct{})
	go func() { // ended by the cut
		defer close(done)
		for rows.Next() {
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.close() // ends the stuck Next, so the test can fail instead of hanging
		<-done
		t.Fatal("Next on a stalled network outlived the transaction's context")
	}
	took := time.Since(start)
	t.Logf("Next ended %v after the transaction began (deadline %v)", took, deadline)
	assert.ErrorIs(t, rows.Err(), context.DeadlineExceeded)
	assert.Less(t, took, deadline+time.Second, "the bound TestNetworkStall holds the query's context to")
}

// errorAfterRows fails with division by zero (22012) after 999 rows.
const errorAfterRows = `SELECT CASE WHEN g = 1000 THEN 1/(g - g) ELSE g END FROM generate_series(1, 2000) g`

func TestEarlyCloseDrainReportsServerError(t *testing.T) {
	db := openPG(t, DriverName, singleDSN)
	// CloseAuto with a drain timeout that a loaded machine cannot exceed:
	// the drain, not the cut, must meet the error.
	s := mustStream(t, WithCloseMode(CloseAuto), WithDrainTimeout(time.Minute))
	rows, err := db.Query(errorAfterRows, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	err = rows.Close()
	var pqErr *pq.Error
	require.ErrorAs(t, err, &pqErr, "Close hid the error its drain met")
	assert.Equal(t, pqerror.DivisionByZero, pqErr.Code)
	assert.Equal(t, Closed, s.State())
}

// TestDrainDeadlineFaultCutsConnection: when CloseAuto cannot bound its
// drain (setting the deadline fails) or cannot lift the bound afterwards
// (the next query would time out), the connection is cut and never goes
// back to the pool.
func TestDrainDeadlineFaultCutsConnection(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		name string
		rows int
		fail func(time.Time) bool
	}{
		// Left alone, the drain would read all 200,000 rows and keep the
		// connection.
		{"setting the deadline fails", 200_000, func(d time.Time) bool { return !d.IsZero() }},
		// The drain finishes; the deadline stays on the connection.
		{"clearing the deadline fails", 100, func(d time.Time) bool { return d.IsZero() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := pq.NewConnector(pgtest.DSN(t))
			require.NoError(t, err)
			c, err := NewConnector(pc)
			require.NoError(t, err)
			fd := &fakeDialer{}
			pc.Dialer(NewDialer(fd)) // after NewConnector, which installs its own
			db := sql.OpenDB(c)
			defer db.Close()
			db.SetMaxOpenConns(1)
			var before, after int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&before))

			s := mustStream(t, WithCloseMode(CloseAuto), WithDrainTimeout(time.Minute))
			rows, err := db.Query(bigQuery, tc.rows, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			sock := fd.last()
			failDeadlines(sock, tc.fail)
			assert.NoError(t, rows.Close())
			failDeadlines(sock, nil)
			require.Equal(t, int64(1), sock.faults.Load(), "the fault was not injected")
			assert.True(t, sock.isClosed(), "the connection was not cut")

			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&after), "the next query")
			assert.NotEqual(t, before, after, "the connection went back to the pool")
		})
	}
}

// TestCloseOnEndedStreamKeepsConnection: Close after the end of the result
// has nothing to stop, whatever the CloseMode: a fully read stream under
// CloseCut, or one ended by a server error, keeps its backend.
func TestCloseOnEndedStreamKeepsConnection(t *testing.T) {
	for _, mode := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
		for _, tc := range []struct {
			query string
			want  State
		}{
			{"SELECT g FROM generate_series(1, 1000) g", Complete},
			{errorAfterRows, Failed},
		} {
			t.Run(mode.String()+" "+tc.want.String(), func(t *testing.T) {
				db := openPG(t, DriverName, "jsonstream_close="+mode.String())
				db.SetMaxOpenConns(1)
				before := pidOf(t, db)
				s := mustStream(t)
				rows, err := db.Query(tc.query, s)
				require.NoError(t, err)
				for rows.Next() {
				}
				require.Equal(t, tc.want, s.State(), "rows.Err: %v", rows.Err())
				_ = rows.Close()
				after := pidOf(t, db)
				assert.Equal(t, before, after, "Close of an ended stream ended the connection")
			})
		}
	}
}

// endByCut ends a stream by Cancel or by its pause timeout, both of which
// cut the connection; it returns the error the stream reports.
var endByCut = []struct {
	name string
	end  func(t *testing.T, c Controller)
	want error
}{
	{"Cancel", func(t *testing.T, c Controller) { require.NoError(t, c.Cancel()) }, ErrCanceled},
	{"pause timeout", func(t *testing.T, c Controller) {
		require.NoError(t, c.SetPauseTimeout(50*time.Millisecond))
		require.NoError(t, c.Pause())
		require.Eventually(t, func() bool { return c.State() == Failed }, 5*time.Second, time.Millisecond)
	}, ErrPauseTimeout},
}

// TestCloseAfterCutReturnsNil: the stream already reported why it failed;
// Close must not add the read error of the socket it cut. At the driver
// level, since database/sql drops the error of the Close it makes itself
// after Next fails.
func TestCloseAfterCutReturnsNil(t *testing.T) {
	needRowsTable(t)
	connector, err := (&Driver{inner: pq.Driver{}, settings: defaultSettings()}).OpenConnector(pgtest.DSN(t) + " " + singleDSN)
	require.NoError(t, err)
	for _, tc := range endByCut {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dc, err := connector.Connect(ctx)
			require.NoError(t, err)
			defer dc.Close()
			dr, err := dc.(driver.QueryerContext).QueryContext(ctx, bigQuery,
				[]driver.NamedValue{{Ordinal: 1, Value: int64(bigRows)}})
			require.NoError(t, err)
			dest := make([]driver.Value, len(dr.Columns()))
			require.NoError(t, dr.Next(dest))
			tc.end(t, dr.(Controller))
			assert.ErrorIs(t, dr.Next(dest), tc.want)
			assert.NoError(t, dr.Close())
			assert.True(t, dc.(*conn).isCut(), "the connection was not cut")
		})
	}
}

// TestCloseRightAfterCutReturnsNil is TestCloseAfterCutReturnsNil through
// database/sql with no Next in between, where rows.Close returns what the
// driver's Close returns.
func TestCloseRightAfterCutReturnsNil(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, singleDSN)
	for _, tc := range endByCut {
		t.Run(tc.name, func(t *testing.T) {
			s := mustStream(t)
			rows, err := db.Query(bigQuery, bigRows, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			tc.end(t, s)
			assert.NoError(t, rows.Close())
			assert.Equal(t, Failed, s.State())
		})
	}
}

func TestCommitAfterFailedStatementReturnsError(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		var out []any
		for _, fail := range []func(tx *sql.Tx) error{
			func(tx *sql.Tx) error { _, err := tx.Exec("SELECT 1/0"); return err },
			func(tx *sql.Tx) error {
				rows, err := tx.Query(errorAfterRows)
				if err != nil {
					return err
				}
				for rows.Next() {
				}
				return rows.Err()
			},
		} {
			tx, err := db.Begin()
			require.NoError(t, err)
			require.Error(t, fail(tx))
			err = tx.Commit()
			require.ErrorIs(t, err, pq.ErrInFailedTransaction)
			out = append(out, err.Error())
		}
		return out
	})
}

// TestEarlyCloseInsideExecBegin: inside a transaction begun with
// Exec("BEGIN"), which database/sql does not know of, an early Close
// never cuts the connection: the transaction, what it wrote and the
// session go on exactly as through lib/pq, in every close mode. The
// transaction status comes from the server's ReadyForQuery (frame.go).
func TestEarlyCloseInsideExecBegin(t *testing.T) {
	needRowsTable(t)
	type result struct {
		Inserted  int
		SamePid   bool
		Committed int
	}
	run := func(t *testing.T, db *sql.DB) result {
		ctx := context.Background()
		table := fmt.Sprintf("exec_begin_%d", time.Now().UnixNano())
		_, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (a int)")
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = db.Exec("DROP TABLE " + table) })
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		pid := pidOf(t, conn)
		_, err = conn.ExecContext(ctx, "BEGIN")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		require.NoError(t, err)
		rows, err := conn.QueryContext(ctx, bigQuery, 200_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		var res result
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&res.Inserted),
			"the transaction goes on after the early Close")
		res.SamePid = pidOf(t, conn) == pid
		_, err = conn.ExecContext(ctx, "COMMIT")
		require.NoError(t, err)
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&res.Committed))
		return res
	}
	want := run(t, openPG(t, "postgres", ""))
	require.Equal(t, result{Inserted: 1, SamePid: true, Committed: 1}, want)
	for _, mode := range []string{"", "jsonstream_close=auto", "jsonstream_close=cut", "jsonstream_close=drain"} {
		t.Run("mode="+mode, func(t *testing.T) {
			assert.Equal(t, want, run(t, openPG(t, DriverName, mode)))
		})
	}
}

// TestCloseKeepsABufferedResult: when the result's ReadyForQuery has
// reached lib/pq, the rest of the result is in its buffer, and an early
// Close reads it off and keeps the connection in every close mode, over
// plaintext and over jsonstream's TLS. CloseCut's look at what has
// arrived would otherwise cut it for the second of twenty small rows.
func TestCloseKeepsABufferedResult(t *testing.T) {
	for _, closeMode := range []string{"jsonstream_close=cut", "jsonstream_close=auto"} {
		for _, tlsMode := range []string{"sslmode=disable", "sslmode=require"} {
			t.Run(closeMode+"/"+tlsMode, func(t *testing.T) {
				db := openPG(t, DriverName, singleDSN+" "+closeMode+" "+tlsMode)
				db.SetMaxOpenConns(1)
				before := pidOf(t, db)
				rows, err := db.Query("SELECT g FROM generate_series(1, 20) g")
				require.NoError(t, err)
				require.True(t, rows.Next())
				require.NoError(t, rows.Close())
				assert.Equal(t, before, pidOf(t, db), "the connection was cut")
			})
		}
	}
}
