package jsonstream

import (
	"context"
	"database/sql"
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
			db := openPG(t, DriverName, tc.dsn)
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
	for _, mode := range []string{"", "jsonstream_fetch_size=100"} {
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
		const deadline = 500 * time.Millisecond
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
		if mode != "" {
			// database/sql closes the failed rows inside Next: the
			// cursor's end statement then waits for the dead network as
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
