package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream/internal/pgtest"
	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openDialed is a pool of one connection in the default mode whose
// connections go through d.
func openDialed(t *testing.T, d *fakeDialer) *sql.DB {
	t.Helper()
	pc, err := pq.NewConnector(pgtest.DSN(t))
	require.NoError(t, err)
	c, err := NewConnector(pc)
	require.NoError(t, err)
	pc.Dialer(NewDialer(d))
	// What NewConnectorConfig sets: the wire is jsonstream's dialer's.
	c.ownWire = true
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	return db
}

// openOwed is a pool of one connection in the default mode whose socket
// counts its reads, with the backend's pid.
func openOwed(t *testing.T) (*sql.DB, *fakeSock, int) {
	t.Helper()
	needRowsTable(t)
	d := &fakeDialer{}
	db := openDialed(t, d)
	var pid int
	require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
	return db, d.last(), pid
}

// owedTxStream is openOwed's, with a stream of bigQuery in a transaction
// (rolled back at the test's end) past its first row.
func owedTxStream(t *testing.T) (*sql.DB, *fakeSock, int, *sql.Tx, *sql.Rows) {
	t.Helper()
	db, s, pid := openOwed(t)
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	rows, err := tx.QueryContext(ctx, bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	return db, s, pid, tx, rows
}

// closeAfterTermination ends the session of backend pid, whose socket
// is s, waits until it is gone, and closes rows, a stream on it: Close
// reads the FATAL and reports it.
func closeAfterTermination(t *testing.T, s *fakeSock, pid int, rows *sql.Rows) {
	t.Helper()
	monitor := openPG(t, "postgres", "")
	_, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	requireBackendStops(t, monitor, pid)
	before := s.reads.Load()
	var ended *SessionEndedError
	require.ErrorAs(t, rows.Close(), &ended)
	assert.Equal(t, "57P01", string(ended.Server.Code))
	assert.NotZero(t, s.reads.Load()-before)
}

// closeReads closes rows and returns how many times the socket was read
// meanwhile.
func closeReads(t *testing.T, s *fakeSock, rows *sql.Rows) int64 {
	t.Helper()
	before := s.reads.Load()
	require.NoError(t, rows.Close())
	return s.reads.Load() - before
}

// backendState waits until the backend pid is in state want, as the server
// sees it, or fails after 10 s: an owed end is the server's to carry out
// while no one reads its replies.
func backendState(t *testing.T, monitor *sql.DB, pid int, want string) {
	t.Helper()
	var state string
	deadline := time.Now().Add(10 * time.Second)
	for {
		require.NoError(t, monitor.QueryRow(
			"SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state))
		if state == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, want, state, "backend %d", pid)
}

// TestPortalEndIsOwed: an early Close of a portal in the caller's
// transaction (BeginTx, or Exec("BEGIN")) with nothing left in flight
// sends the end and returns without reading the socket. The server
// carries the end out on its own (the backend is idle in its
// transaction while nobody has read the replies), and whatever runs next
// on the connection reads them first and then gets exactly its own
// result: a statement through lib/pq, a single-statement stream, another
// portal stream, a QueryRow; the transaction commits.
func TestPortalEndIsOwed(t *testing.T) {
	monitor := openPG(t, "postgres", "")
	ctx := context.Background()
	next := map[string]func(t *testing.T, q txQueryer){
		"exec": func(t *testing.T, q txQueryer) {
			res, err := q.ExecContext(ctx, "INSERT INTO owed_t VALUES (7)")
			require.NoError(t, err)
			n, err := res.RowsAffected()
			require.NoError(t, err)
			assert.Equal(t, int64(1), n)
		},
		"single": func(t *testing.T, q txQueryer) {
			rows, err := q.QueryContext(ctx, "SELECT g FROM generate_series(1, 5) g",
				mustStream(t, WithStreamMode(ModeSingle)))
			require.NoError(t, err)
			assert.Equal(t, [][]any{{int64(1)}, {int64(2)}, {int64(3)}, {int64(4)}, {int64(5)}}, scanAll(t, rows))
		},
		"portal": func(t *testing.T, q txQueryer) {
			rows, err := q.QueryContext(ctx, "SELECT g FROM generate_series(1, $1::int) g", 3)
			require.NoError(t, err)
			assert.Equal(t, [][]any{{int64(1)}, {int64(2)}, {int64(3)}}, scanAll(t, rows))
		},
		"queryrow": func(t *testing.T, q txQueryer) {
			rows, err := q.QueryContext(ctx, "SELECT count(*) FROM owed_t")
			require.NoError(t, err)
			assert.Equal(t, [][]any{{int64(0)}}, scanAll(t, rows))
		},
	}
	for _, where := range []string{"BeginTx", "Exec(BEGIN)"} {
		for name, run := range next {
			t.Run(where+"/"+name, func(t *testing.T) {
				db, s, pid := openOwed(t)
				_, err := db.ExecContext(ctx, "CREATE TEMP TABLE owed_t (a int)")
				require.NoError(t, err)
				conn, err := db.Conn(ctx)
				require.NoError(t, err)
				q, tx := enterTx(t, conn, where)
				rec := &recorder{}
				rows, err := q.QueryContext(ctx, bigQuery, 1_000_000, mustStream(t, WithObserver(rec)))
				require.NoError(t, err)
				require.True(t, rows.Next())
				assert.Zero(t, closeReads(t, s, rows), "Close read the socket")
				end := rec.ended(t)
				assert.Equal(t, OutcomePortalClosed, end.Outcome)
				assert.False(t, end.ConnCut)
				backendState(t, monitor, pid, "idle in transaction")
				run(t, q)
				commitTx(t, conn, tx, where)
				require.NoError(t, conn.Close())
				assert.Equal(t, pid, pidOf(t, db), "the connection was kept")
				sessionClean(t, db)
			})
		}
	}
}

// TestPortalOwedEndThenSingleStream: the replies of an owed end do not
// count as the reply of the statement sent after it: while a
// single-statement stream sent behind one is being read, the framer does
// not take the connection for idle (which would let Close take the
// result for whole, and another stream start on the connection).
func TestPortalOwedEndThenSingleStream(t *testing.T) {
	db, s, _ := openOwed(t)
	ctx := context.Background()
	sc, err := db.Conn(ctx)
	require.NoError(t, err)
	defer sc.Close()
	_, err = sc.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)
	rows, err := sc.QueryContext(ctx, bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.Zero(t, closeReads(t, s, rows))
	rows, err = sc.QueryContext(ctx, "SELECT g, pad FROM jsonstream_test_rows ORDER BY g",
		mustStream(t, WithStreamMode(ModeSingle)))
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, sc.Raw(func(dc any) error {
		assert.False(t, dc.(*conn).sock.frames.idle(), "idle in the middle of a result")
		return nil
	}))
	require.NoError(t, rows.Close())
	_, err = sc.ExecContext(ctx, "COMMIT")
	require.NoError(t, err)
}

// TestPortalEndNotOwed: the end is read before Close returns inside a
// transaction block with a batch in flight (which may fail and leave the
// transaction failed), and with a notice handler on lib/pq's connection,
// inside a transaction or not, which must hear what the server sends
// before Close returns, as through lib/pq. TestPortalAutocommitEndNotOwed
// has the other cases outside a transaction.
func TestPortalEndNotOwed(t *testing.T) {
	ctx := context.Background()
	t.Run("batch in flight", func(t *testing.T) {
		db, s, _ := openOwed(t)
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		rows, err := tx.QueryContext(ctx, bigQuery, 1_000_000)
		require.NoError(t, err)
		for i := 0; i < 20_000; i++ {
			require.True(t, rows.Next())
		}
		assert.NotZero(t, closeReads(t, s, rows))
		require.NoError(t, tx.Commit())
	})
	t.Run("the session ended first", func(t *testing.T) {
		// A FATAL already sent, which Close reads and reports, as it does
		// outside a transaction (TestPortalAutocommitEndNotOwed).
		_, s, pid, _, rows := owedTxStream(t)
		closeAfterTermination(t, s, pid, rows)
	})
	t.Run("notice handler", func(t *testing.T) {
		db, s, _ := openOwed(t)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		rawInner(t, conn, func(inner driver.Conn) { pq.SetNoticeHandler(inner, func(*pq.Error) {}) })
		q, _ := enterTx(t, conn, "Exec(BEGIN)")
		rows, err := q.QueryContext(ctx, bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		assert.NotZero(t, closeReads(t, s, rows))
		commitTx(t, conn, nil, "Exec(BEGIN)")
	})
	t.Run("notice handler, autocommit", func(t *testing.T) {
		db, s, _ := openOwed(t)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		rawInner(t, conn, func(inner driver.Conn) { pq.SetNoticeHandler(inner, func(*pq.Error) {}) })
		rows, err := conn.QueryContext(ctx, bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		assert.NotZero(t, closeReads(t, s, rows))
	})
}

// TestPortalEarlyCloseNotification: a notification that arrives among the
// replies of an early close (it is delivered once the stream's implicit
// transaction ends) reaches lib/pq's handler before Close returns, as it
// would through lib/pq, whose Close reads the rest. A LISTEN in a DO block
// passes unseen by the framer; the handler, set on the inner conn
// (Unwrap), keeps the end from being owed without its Sync.
func TestPortalEarlyCloseNotification(t *testing.T) {
	for _, listen := range []string{"LISTEN owed_news", "DO $$ BEGIN LISTEN owed_news; END $$"} {
		t.Run(listen, func(t *testing.T) {
			db, _, _ := openOwed(t)
			notifier := openPG(t, "postgres", "")
			ctx := context.Background()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			got := make(chan string, 1)
			rawInner(t, conn, func(inner driver.Conn) {
				pq.SetNotificationHandler(inner, func(n *pq.Notification) { got <- n.Extra })
			})
			_, err = conn.ExecContext(ctx, listen)
			require.NoError(t, err)
			rows, err := conn.QueryContext(ctx, bigQuery, 1_000_000)
			require.NoError(t, err)
			require.True(t, rows.Next())
			// Delivered once the stream's transaction ends: in its end.
			_, err = notifier.Exec("NOTIFY owed_news, 'at the end'")
			require.NoError(t, err)
			require.NoError(t, rows.Close())
			select {
			case extra := <-got:
				assert.Equal(t, "at the end", extra)
			default:
				t.Fatal("the notification had not reached the handler when Close returned")
			}
		})
	}
}

// TestPortalOwedEndOnEndedSession: a session the server ends while its
// connection owes an end fails the transaction's next statement with the
// FATAL, as lib/pq reports it, and the pool replaces the connection.
func TestPortalOwedEndOnEndedSession(t *testing.T) {
	db, s, pid := openOwed(t)
	monitor := openPG(t, "postgres", "")
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	rows, err := tx.QueryContext(ctx, bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.Zero(t, closeReads(t, s, rows))
	_, err = monitor.Exec("SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	requireBackendStops(t, monitor, pid)
	_, err = tx.ExecContext(ctx, "SELECT 1")
	require.Error(t, err)
	_ = tx.Rollback()
	var other int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&other))
	assert.NotEqual(t, pid, other)
}

// TestPortalOwedEndLostInTx: what ends the connection while the next
// statement of a transaction reads an owed end is what that statement
// reports, as lib/pq would have read it. A FATAL before the end's last
// reply means the server ran nothing after the end: the statement fails
// with driver.ErrBadConn, as it does when lib/pq reads the FATAL itself.
// A failed read is the read's error itself,
// which lib/pq reports as it is: what was written after the end may
// have run. The pool replaces the connection either way.
func TestPortalOwedEndLostInTx(t *testing.T) {
	fatal := message('E', errorBody("SFATAL", "VFATAL", "C57P01", "Mterminating connection due to administrator command"))
	refused := errors.New("read refused")
	for _, how := range []string{"a FATAL first", "a failed read"} {
		t.Run(how, func(t *testing.T) {
			db, s, pid, tx, rows := owedTxStream(t)
			require.Zero(t, closeReads(t, s, rows), "the end was not owed")
			if how == "a FATAL first" {
				s.inject(fatal)
			} else {
				s.failRead.Store(&refused)
			}
			_, err := tx.ExecContext(context.Background(), "SELECT 1")
			if how == "a FATAL first" {
				require.ErrorIs(t, err, driver.ErrBadConn)
			} else {
				require.ErrorIs(t, err, refused)
				assert.NotErrorIs(t, err, driver.ErrBadConn)
			}
			assert.True(t, s.isClosed(), "the connection was kept")
			_ = tx.Rollback()
			assert.NotEqual(t, pid, pidOf(t, db), "the pool kept the connection")
		})
	}
}

// TestPortalOwedEndAgeFromTheFirstMessage: a stream's age, past which its
// end is not owed, counts from its query's first message, where the
// server's statement_timeout starts, also when the statement took a round
// trip to be described (an argument with a backslash) before its first
// batch was asked for.
func TestPortalOwedEndAgeFromTheFirstMessage(t *testing.T) {
	const lag = 300 * time.Millisecond // each read: the describe's, then the first batch's
	withOwedEndMaxAge(t, lag*3/2)
	db, s, _ := openOwed(t)
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	s.delay.Store(int64(lag))
	rows, err := tx.QueryContext(ctx, "SELECT g, $1::text FROM generate_series(1, 1000000) g", `a\b`)
	require.NoError(t, err)
	require.True(t, rows.Next())
	s.delay.Store(0)
	assert.NotZero(t, closeReads(t, s, rows), "an end older than owedEndMaxAge was owed")
	require.NoError(t, tx.Commit())
}

// timedOutTx is a transaction whose stream outlived its
// statement_timeout (timeoutInTx).
type timedOutTx struct {
	db   *sql.DB
	s    *fakeSock
	pid  int
	conn *sql.Conn
	rows *sql.Rows
	tx   *sql.Tx // nil for Exec(BEGIN)
}

// timeoutInTx begins a transaction on a pool of one connection (where:
// "BeginTx" or "Exec(BEGIN)") with a statement_timeout of 100 ms, writes
// a row into owed_tx_timeout, and streams past the first batch (whose
// Sync stops the timeout; the next Executes start it again), then waits
// out the timeout while the server waits for the client.
func timeoutInTx(t *testing.T, where string) timedOutTx {
	t.Helper()
	ctx := context.Background()
	var x timedOutTx
	x.db, x.s, x.pid = openOwed(t)
	_, err := x.db.Exec("CREATE TABLE IF NOT EXISTS owed_tx_timeout (a int); TRUNCATE owed_tx_timeout")
	require.NoError(t, err)
	x.conn, err = x.db.Conn(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = x.conn.Close() }) // closed already when the transaction found it discarded
	var q txQueryer
	q, x.tx = enterTx(t, x.conn, where)
	if x.tx != nil {
		t.Cleanup(func() { _ = x.tx.Rollback() }) // before conn.Close
	}
	_, err = q.ExecContext(ctx, "SET LOCAL statement_timeout = '100ms'")
	require.NoError(t, err)
	_, err = q.ExecContext(ctx, "INSERT INTO owed_tx_timeout VALUES (1)")
	require.NoError(t, err)
	// Small rows: the second batch comes in one segment, so the read of
	// its first row brings it whole, and nothing is in flight when the
	// stream is closed (the end may be owed).
	x.rows, err = q.QueryContext(ctx, "SELECT g FROM jsonstream_test_rows ORDER BY g")
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		require.True(t, x.rows.Next())
	}
	time.Sleep(400 * time.Millisecond)
	return x
}

// TestPortalOwedEndInTxTimedOut: inside a transaction block, a
// statement_timeout that expires while the server waits for the next
// Execute fails the close of the portal and aborts the transaction. A
// stream older than owedEndMaxAge reads its end, and Close reports the
// error, as lib/pq's Close would. A younger one owes it (a timeout shorter
// than owedEndMaxAge): the statement that reads the end fails with the
// error, a COMMIT included, and the connection is discarded, so that no
// COMMIT seems to succeed for a transaction the server rolled back.
func TestPortalOwedEndInTxTimedOut(t *testing.T) {
	ctx := context.Background()
	requireTimedOut := func(t *testing.T, err error, msg string) {
		t.Helper()
		var pe *pq.Error
		require.ErrorAs(t, err, &pe, msg)
		assert.Equal(t, "57014", string(pe.Code))
	}
	for _, where := range []string{"BeginTx", "Exec(BEGIN)"} {
		t.Run("Close reads the end/"+where, func(t *testing.T) {
			x := timeoutInTx(t, where)
			before := x.s.reads.Load()
			requireTimedOut(t, x.rows.Close(), "Close reports the statement_timeout")
			assert.NotZero(t, x.s.reads.Load()-before, "Close read its end")
			if x.tx != nil {
				assert.ErrorIs(t, x.tx.Commit(), pq.ErrInFailedTransaction)
			} else {
				_, err := x.conn.ExecContext(ctx, "ROLLBACK")
				require.NoError(t, err)
			}
			assert.Equal(t, x.pid, pidOf(t, x.conn), "the connection was kept")
			var n int
			require.NoError(t, x.conn.QueryRowContext(ctx, "SELECT count(*) FROM owed_tx_timeout").Scan(&n))
			assert.Zero(t, n)
		})
		t.Run("the next statement reads the end/"+where, func(t *testing.T) {
			withOwedEndMaxAge(t, time.Hour)
			x := timeoutInTx(t, where)
			require.Zero(t, closeReads(t, x.s, x.rows), "the end is owed")
			var err error
			if x.tx != nil {
				err = x.tx.Commit()
			} else {
				_, err = x.conn.ExecContext(ctx, "COMMIT")
			}
			requireTimedOut(t, err, "COMMIT fails with the end's error")
			_ = x.conn.Close()
			var n int
			require.NoError(t, x.db.QueryRow("SELECT count(*) FROM owed_tx_timeout").Scan(&n))
			assert.Zero(t, n, "rolled back")
			assert.NotEqual(t, x.pid, pidOf(t, x.db), "the connection was discarded")
		})
	}
	t.Run("a portal stream reads the end", func(t *testing.T) {
		withOwedEndMaxAge(t, time.Hour)
		x := timeoutInTx(t, "BeginTx")
		require.Zero(t, closeReads(t, x.s, x.rows), "the end is owed")
		var one int
		requireTimedOut(t, x.tx.QueryRowContext(ctx, "SELECT 1").Scan(&one), "the stream fails with the end's error")
		assert.Error(t, x.tx.Commit())
		_ = x.conn.Close()
		sessionClean(t, x.db)
	})
}
