package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
// would through lib/pq, whose Close reads the rest.
func TestPortalEarlyCloseNotification(t *testing.T) {
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
	_, err = conn.ExecContext(ctx, "LISTEN owed_news")
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
