package jsonstream

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withOwedEndMaxAge sets owedEndMaxAge to d for the test.
func withOwedEndMaxAge(t *testing.T, d time.Duration) {
	old := owedEndMaxAge
	owedEndMaxAge = d
	t.Cleanup(func() { owedEndMaxAge = old })
}

// oweEnd runs a large query on q, reads its first row and closes it,
// reading nothing: the end is owed without Sync. The stream's age does not
// decide it here, however slow the machine (TestPortalAutocommitEndNotOwed
// has the age).
func oweEnd(t *testing.T, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, s *fakeSock, args ...any) {
	t.Helper()
	withOwedEndMaxAge(t, time.Minute)
	rows, err := q.QueryContext(context.Background(), bigQuery, append([]any{1_000_000}, args...)...)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.Zero(t, closeReads(t, s, rows), "Close read the socket")
}

// unsyncedNext are the statements TestPortalAutocommitEndIsOwed and
// TestPortalOwedEndRecovers run after an early close: each checks its own
// result. They cover each way a statement reaches the server: lib/pq's
// simple Query (no Sync), lib/pq's extended protocol (ending with Sync), a
// single-statement stream, a portal stream (no Sync) and a QueryRow.
var unsyncedNext = map[string]func(t *testing.T, db *sql.DB){
	"exec": func(t *testing.T, db *sql.DB) {
		res, err := db.Exec("INSERT INTO owed_u VALUES (7)")
		require.NoError(t, err)
		n, err := res.RowsAffected()
		require.NoError(t, err)
		assert.Equal(t, int64(1), n)
		var count int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM owed_u WHERE a = 7").Scan(&count))
		assert.Equal(t, 1, count, "the INSERT ran once")
	},
	"exec with an argument": func(t *testing.T, db *sql.DB) {
		res, err := db.Exec("INSERT INTO owed_u VALUES ($1)", 8)
		require.NoError(t, err)
		n, err := res.RowsAffected()
		require.NoError(t, err)
		assert.Equal(t, int64(1), n)
		var count int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM owed_u WHERE a = 8").Scan(&count))
		assert.Equal(t, 1, count, "the INSERT ran once")
	},
	"single": func(t *testing.T, db *sql.DB) {
		rows, err := db.Query("SELECT g FROM generate_series(1, 5) g", mustStream(t, WithStreamMode(ModeSingle)))
		require.NoError(t, err)
		assert.Equal(t, [][]any{{int64(1)}, {int64(2)}, {int64(3)}, {int64(4)}, {int64(5)}}, scanAll(t, rows))
	},
	"portal": func(t *testing.T, db *sql.DB) {
		rows, err := db.Query("SELECT g FROM generate_series(1, $1::int) g", 3)
		require.NoError(t, err)
		assert.Equal(t, [][]any{{int64(1)}, {int64(2)}, {int64(3)}}, scanAll(t, rows))
	},
	"queryrow": func(t *testing.T, db *sql.DB) {
		var v int
		require.NoError(t, db.QueryRow("SELECT 41 + 1").Scan(&v))
		assert.Equal(t, 42, v)
	},
}

// TestPortalAutocommitEndIsOwed: outside a transaction, an early Close of
// a read with nothing left in flight sends BEGIN and ROLLBACK without
// Sync and returns without reading the socket. The next statement,
// whichever way it is sent, follows the end on the same server, reads
// the end's replies first and then gets exactly its own result; the
// session is left outside any transaction, with the connection kept.
func TestPortalAutocommitEndIsOwed(t *testing.T) {
	for name, run := range unsyncedNext {
		t.Run(name, func(t *testing.T) {
			db, s, pid := openOwed(t)
			_, err := db.Exec("CREATE TEMP TABLE owed_u (a int)")
			require.NoError(t, err)
			rec := &recorder{}
			oweEnd(t, db, s, mustStream(t, WithObserver(rec)))
			end := rec.ended(t)
			assert.Equal(t, OutcomePortalClosed, end.Outcome)
			assert.False(t, end.ConnCut)
			run(t, db)
			assert.Equal(t, pid, pidOf(t, db), "the connection was kept")
			sessionClean(t, db)
		})
	}
}

// TestPortalOwedSyncWhenIdle: an end without Sync that nothing follows
// gets its Sync from the connection itself within owedSyncDelay: the
// backend turns idle (no longer active, for the server, its timeouts and
// a pooler), the replies are read, and the connection is idle for lib/pq
// too. Without that Sync the backend would stay active.
func TestPortalOwedSyncWhenIdle(t *testing.T) {
	db, s, pid := openOwed(t)
	monitor := openPG(t, "postgres", "")
	rows, err := db.Query(bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	before := s.reads.Load()
	require.Zero(t, closeReads(t, s, rows))
	backendState(t, monitor, pid, "idle")
	require.Eventually(t, func() bool { return s.reads.Load() > before }, 10*time.Second, time.Millisecond,
		"the connection read the end's replies")
	onConn(t, db, func(c *conn) {
		assert.Nil(t, c.sock.owed, "the end is settled")
		assert.True(t, c.sock.frames.idle(), "the connection is idle for lib/pq")
		assert.False(t, c.sock.syncPending.Load())
	})
	var v int
	require.NoError(t, db.QueryRow("SELECT $1::int", 5).Scan(&v))
	assert.Equal(t, 5, v)
	assert.Equal(t, pid, pidOf(t, db))
	sessionClean(t, db)
}

// TestPortalOwedSyncAfterFailedCall: a call that claims the connection
// from the Sync timer and fails before it writes anything (a query the
// portal cannot take, with ModePortal pinned) starts the timer again, so
// the backend still turns idle.
func TestPortalOwedSyncAfterFailedCall(t *testing.T) {
	db, s, pid := openOwed(t)
	monitor := openPG(t, "postgres", "")
	oweEnd(t, db, s)
	_, err := db.Query("SELECT 1; SELECT 2", mustStream(t, WithStreamMode(ModePortal)))
	require.ErrorIs(t, err, ErrPortalQuery)
	backendState(t, monitor, pid, "idle")
	assert.Equal(t, pid, pidOf(t, db))
}

// TestPortalOwedEndBeforeUnwrap: lib/pq's connection handed out by
// Unwrap (sql.Conn.Raw) is used without a claim, so Unwrap carries out an
// owed end without Sync first: the connection is idle when it returns,
// without waiting for the timer (held off here).
func TestPortalOwedEndBeforeUnwrap(t *testing.T) {
	old := owedSyncDelay
	owedSyncDelay = time.Hour
	t.Cleanup(func() { owedSyncDelay = old })
	db, s, _ := openOwed(t)
	ctx := context.Background()
	sc, err := db.Conn(ctx)
	require.NoError(t, err)
	defer sc.Close()
	oweEnd(t, sc, s)
	require.NoError(t, sc.Raw(func(dc any) error {
		c := dc.(*conn)
		require.NotNil(t, c.sock.owed, "the end is owed")
		_ = c.Unwrap()
		assert.Nil(t, c.sock.owed, "the end is settled")
		assert.True(t, c.sock.frames.idle(), "the connection is idle for lib/pq")
		return nil
	}))
	sessionClean(t, sc)
}

// TestPortalOwedEndRecovers: an error the server raises after Close
// found the socket quiet and before it reads the end (here a
// statement_timeout that expires while the end's write is held back)
// makes the server skip everything up to a Sync: the end's ROLLBACK and
// the statement sent after it. The reader of the end finds the error, has
// the Sync sent, and sends the statement again: it runs exactly once, with
// its own result. The error is the closed stream's; its rollback is what
// the end asked for.
func TestPortalOwedEndRecovers(t *testing.T) {
	withOwedEndMaxAge(t, time.Minute)
	for name, run := range unsyncedNext {
		t.Run(name, func(t *testing.T) {
			db, s, pid := openOwed(t)
			_, err := db.Exec("CREATE TEMP TABLE owed_u (a int)")
			require.NoError(t, err)
			expireOwedEnd(t, db, s)
			run(t, db)
			assert.Equal(t, pid, pidOf(t, db), "the connection was kept")
			sessionClean(t, db)
		})
	}
	// Nothing follows: the connection's own Sync ends the skipping.
	t.Run("idle", func(t *testing.T) {
		db, s, pid := openOwed(t)
		monitor := openPG(t, "postgres", "")
		expireOwedEnd(t, db, s)
		backendState(t, monitor, pid, "idle")
		var v int
		require.NoError(t, db.QueryRow("SELECT 3").Scan(&v))
		assert.Equal(t, 3, v)
		assert.Equal(t, pid, pidOf(t, db), "the connection was kept")
		sessionClean(t, db)
	})
}

// sqlQueryer is what expireOwedEnd runs its statements on: a pool, or one
// connection of it.
type sqlQueryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// expireOwedEnd owes an end without Sync on q whose BEGIN the server
// refuses: the end is written only after a statement_timeout of 500 ms
// expired while the server waited for the client (TestPortalOwedEndRecovers).
func expireOwedEnd(t *testing.T, q sqlQueryer, s *fakeSock) {
	t.Helper()
	withOwedEndMaxAge(t, time.Minute)
	ctx := context.Background()
	_, err := q.ExecContext(ctx, "SET statement_timeout = '500ms'")
	require.NoError(t, err)
	rows, err := q.QueryContext(ctx, bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	hold := func(b []byte) {
		if bytes.Contains(b, []byte("ROLLBACK")) {
			s.beforeWrite.Store(nil)
			time.Sleep(1500 * time.Millisecond)
		}
	}
	s.beforeWrite.Store(&hold)
	assert.Zero(t, closeReads(t, s, rows), "Close read the socket")
	require.Nil(t, s.beforeWrite.Load(), "the end was written")
}

// serverMessages returns the complete server messages at the start of b,
// as type and end offset, and stops at the first that b does not hold
// whole.
func serverMessages(b []byte) (types []byte, ends []int) {
	for at := 0; len(b)-at >= 5; {
		end := at + 1 + int(binary.BigEndian.Uint32(b[at+1:]))
		if end > len(b) {
			break
		}
		types, ends = append(types, b[at]), append(ends, end)
		at = end
	}
	return types, ends
}

// TestPortalOwedEndRecoversAcrossReads: when the statement written after a
// failed end without Sync ends with a Sync (lib/pq's Parse, Describe and
// Sync), the server's ReadyForQuery for that Sync answers none of lib/pq's
// writes, whether it arrives in the read that brought the error or in a
// later one. Until lib/pq's statement, sent again, has its own reply, the
// connection never counts as idle (frame.go), and the statement runs once.
func TestPortalOwedEndRecoversAcrossReads(t *testing.T) {
	for _, together := range []bool{true, false} {
		name := map[bool]string{true: "error and ReadyForQuery in one read", false: "in two reads"}[together]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			db, s, pid := openOwed(t)
			sc, err := db.Conn(ctx)
			require.NoError(t, err)
			defer func() { _ = sc.Close() }()
			var js *sock
			require.NoError(t, sc.Raw(func(dc any) error {
				js = dc.(*conn).sock
				return nil
			}))
			_, err = sc.ExecContext(ctx, "CREATE TEMP TABLE owed_u (a int)")
			require.NoError(t, err)
			expireOwedEnd(t, sc, s)

			var shaped, idleSeen bool
			seenError := false
			shape := func(p []byte, n int) int {
				if seenError && js.frames.idle() {
					idleSeen = true
				}
				if shaped {
					return n
				}
				types, ends := serverMessages(p[:n])
				e := bytes.IndexByte(types, 'E')
				if e < 0 {
					return n
				}
				seenError, shaped = true, true
				if !together {
					if ends[e] < n {
						s.holdBack(p[ends[e]:n])
					}
					return ends[e]
				}
				// Read on until the ReadyForQuery that follows the error
				// is in this read too.
				for bytes.IndexByte(types[e:], 'Z') < 0 && n < len(p) {
					m, err := s.Conn.Read(p[n:])
					if err != nil {
						return n
					}
					n += m
					types, _ = serverMessages(p[:n])
				}
				return n
			}
			s.shape.Store(&shape)
			res, err := sc.ExecContext(ctx, "INSERT INTO owed_u VALUES ($1)", 8)
			s.shape.Store(nil)
			require.NoError(t, err)
			require.True(t, shaped, "the end's error was read")
			assert.False(t, idleSeen, "the connection counted as idle before lib/pq's reply")
			n, err := res.RowsAffected()
			require.NoError(t, err)
			assert.Equal(t, int64(1), n)
			var count int
			require.NoError(t, sc.QueryRowContext(ctx, "SELECT count(*) FROM owed_u WHERE a = 8").Scan(&count))
			assert.Equal(t, 1, count, "the INSERT ran once")
			var got int
			require.NoError(t, sc.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&got))
			assert.Equal(t, pid, got, "the connection was kept")
		})
	}
}

// TestPortalOwedEndUnrecoverable: what was written after a failed end
// without Sync is sent again only when the server skipped all of it; with
// two Syncs in it (which lib/pq never writes before it reads), part of it
// ran, and the read that meets the end's error fails with errUnrecoverable
// and discards the connection, instead of running anything twice.
func TestPortalOwedEndUnrecoverable(t *testing.T) {
	ctx := context.Background()
	db, s, pid := openOwed(t)
	sc, err := db.Conn(ctx)
	require.NoError(t, err)
	expireOwedEnd(t, sc, s)
	sync := []byte{'S', 0, 0, 0, 4}
	require.NoError(t, sc.Raw(func(dc any) error {
		c := dc.(*conn)
		_, err := c.sock.Write(append(bytes.Clone(sync), sync...))
		require.NoError(t, err)
		n, err := c.sock.Read(make([]byte, 64))
		assert.Zero(t, n)
		assert.ErrorIs(t, err, errUnrecoverable)
		assert.True(t, c.isCut(), "the connection was discarded")
		return nil
	}))
	require.NoError(t, sc.Close())
	var v int
	require.NoError(t, db.QueryRow("SELECT 5").Scan(&v))
	assert.Equal(t, 5, v)
	assert.NotEqual(t, pid, pidOf(t, db), "a new connection ran it")
}

// TestPortalOwedEndSessionEnded: a FATAL read before an end without Sync
// was carried out means the server ran nothing sent after it: lib/pq's
// read of the next statement gets io.EOF, which it reports as
// driver.ErrBadConn, and database/sql runs the statement again on a new
// connection; a portal stream's start reports the SessionEndedError,
// which wraps driver.ErrBadConn, with the same effect. The FATAL is
// played before the server's real replies, in English and translated.
func TestPortalOwedEndSessionEnded(t *testing.T) {
	for lang, fatal := range map[string][]byte{
		"en": message('E', errorBody("SFATAL", "VFATAL", "C57P01", "Mterminating connection due to administrator command")),
		// A server whose messages are translated: by V, not S.
		"ru": message('E', errorBody("SВАЖНО", "VFATAL", "C57P01", "Mprekrashchenie")),
	} {
		for _, name := range []string{"queryrow", "lib/pq extended", "portal"} {
			t.Run(lang+"/"+name, func(t *testing.T) { oweAndEnd(t, name, fatal) })
		}
	}
}

// oweAndEnd owes an end without Sync, plays fatal before the server's
// replies, and runs the next statement name (TestPortalOwedEndSessionEnded).
func oweAndEnd(t *testing.T, name string, fatal []byte) {
	db, s, pid := openOwed(t)
	db.SetMaxOpenConns(2)
	oweEnd(t, db, s)
	s.inject(fatal)
	if name == "lib/pq extended" {
		// lib/pq's Parse, Describe and Sync reach the server, which runs
		// them: a read, so that running it twice changes nothing.
		var v int
		require.NoError(t, db.QueryRow("SELECT 40 + $1::int", 2, mustStream(t, WithStreamMode(ModeSingle))).Scan(&v))
		assert.Equal(t, 42, v)
	} else {
		unsyncedNext[name](t, db)
	}
	assert.NotEqual(t, pid, pidOf(t, db), "a new connection ran it")
}

// TestPortalAutocommitEndNotOwed: outside a transaction the end is read
// before Close returns when a batch is in flight (its rows may fail, and
// Close reports it), when the server already sent something (a FATAL,
// which Close reports), when the stream is older than owedEndMaxAge (a
// statement_timeout may have expired, which Close then reports), when the
// statement writes (its end commits, which may fail), and on a session
// that ran LISTEN (a notification that comes at the end reaches lib/pq's
// handler before Close returns, as through lib/pq).
func TestPortalAutocommitEndNotOwed(t *testing.T) {
	t.Run("batch in flight", func(t *testing.T) {
		db, s, _ := openOwed(t)
		rows, err := db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		for i := 0; i < 20_000; i++ {
			require.True(t, rows.Next())
		}
		assert.NotZero(t, closeReads(t, s, rows))
		sessionClean(t, db)
	})
	t.Run("older than owedEndMaxAge", func(t *testing.T) {
		withOwedEndMaxAge(t, 20*time.Millisecond)
		db, s, pid := openOwed(t)
		rows, err := db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		time.Sleep(50 * time.Millisecond)
		assert.NotZero(t, closeReads(t, s, rows))
		sessionClean(t, db)
		// A statement_timeout that expired while the server waited: Close
		// reports it.
		_, err = db.Exec("SET statement_timeout = '50ms'")
		require.NoError(t, err)
		rows, err = db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		time.Sleep(200 * time.Millisecond)
		var pe *pq.Error
		require.ErrorAs(t, rows.Close(), &pe)
		assert.Equal(t, "57014", string(pe.Code))
		assert.Equal(t, pid, pidOf(t, db), "the connection was kept")
	})
	t.Run("the session ended first", func(t *testing.T) {
		// A FATAL already sent, which Close reads and reports, and the
		// pool replaces the connection, as before the end was owed.
		db, s, pid := openOwed(t)
		rows, err := db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		closeAfterTermination(t, s, pid, rows)
		assert.NotEqual(t, pid, pidOf(t, db), "a new connection")
	})
	t.Run("a statement that writes", func(t *testing.T) {
		db, s, _ := openOwed(t)
		_, err := db.Exec("CREATE TEMP TABLE owed_w (a int)")
		require.NoError(t, err)
		rows, err := db.Query("INSERT INTO owed_w SELECT g FROM generate_series(1, 1000) g RETURNING a")
		require.NoError(t, err)
		require.True(t, rows.Next())
		assert.NotZero(t, closeReads(t, s, rows))
		var n int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM owed_w").Scan(&n))
		assert.Equal(t, 1000, n)
	})
	t.Run("LISTEN", func(t *testing.T) {
		db, s, _ := openOwed(t)
		_, err := db.Exec("LISTEN owed_unsynced")
		require.NoError(t, err)
		rows, err := db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		assert.NotZero(t, closeReads(t, s, rows))
		sessionClean(t, db)
	})
}

// TestPortalOwedEndRaces: early closes whose next statement comes before,
// at or after the Sync timer, under -race: every next statement gets its
// own result on the same session, which ends outside any transaction, and
// closing the pool with an end owed leaves nothing running (goleak).
func TestPortalOwedEndRaces(t *testing.T) {
	db, _, pid := openOwed(t)
	for i := 0; i < 300; i++ {
		rows, err := db.Query(bigQuery, 1_000_000)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		time.Sleep(time.Duration(rand.IntN(int(2 * owedSyncDelay))))
		var v int
		require.NoError(t, db.QueryRow("SELECT $1::int", i).Scan(&v))
		require.Equal(t, i, v)
	}
	assert.Equal(t, pid, pidOf(t, db))
	sessionClean(t, db)
	rows, err := db.Query(bigQuery, 1_000_000)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	require.NoError(t, db.Close())
}
