package jsonstream

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The portal mode against PostgreSQL: what an early end keeps, what it
// leaves of a write, and what the server does while a portal stream
// waits. The drop-in suites run in this mode too (streamModes).

const portalDSN = "jsonstream_mode=portal"

// portalModes are the stream modes compared with lib/pq for statements
// that cursor mode refuses: the single statement, and the portal.
var portalModes = []string{"", portalDSN}

// TestPortalEarlyCloseKeepsSession: an early Close of a portal stream
// keeps the connection and its session (a temporary table stands for its
// state), outside a transaction, in one begun with BeginTx and in one
// begun with Exec("BEGIN"), under CloseAuto and CloseDrain; and the
// caller's transaction goes on.
func TestPortalEarlyCloseKeepsSession(t *testing.T) {
	needRowsTable(t)
	for _, closeMode := range []string{"auto", "drain"} {
		for _, where := range []string{"autocommit", "BeginTx", "Exec(BEGIN)"} {
			t.Run(closeMode+"/"+where, func(t *testing.T) {
				db := openPG(t, DriverName, portalDSN+" jsonstream_close="+closeMode)
				conn, pid := backend(t, db)
				ctx := context.Background()
				_, err := conn.ExecContext(ctx, "CREATE TEMP TABLE portal_kept (a int)")
				require.NoError(t, err)
				q, tx := enterTx(t, conn, where)
				_, err = q.ExecContext(ctx, "INSERT INTO portal_kept VALUES (1)")
				require.NoError(t, err)
				rec := &recorder{}
				rows, err := q.QueryContext(ctx, bigQuery, 1_000_000, mustStream(t, WithObserver(rec)))
				require.NoError(t, err)
				require.True(t, rows.Next())
				start := time.Now()
				require.NoError(t, rows.Close())
				t.Logf("Close after 1 of 1,000,000 rows took %v", time.Since(start))
				end := rec.ended(t)
				assert.Equal(t, ModePortal, end.Mode)
				assert.False(t, end.ConnCut)
				if closeMode == "drain" {
					assert.Equal(t, OutcomeDrained, end.Outcome)
				} else {
					assert.Equal(t, OutcomePortalClosed, end.Outcome)
				}
				txGoesOn(t, conn, q, tx, where, "portal_kept", pid)
			})
		}
	}
}

// TestPortalFailureKeepsSession: Cancel, the pause timeout and the end of
// the context end a portal stream without cutting its connection: the
// server stops the query, and the session serves the next one.
func TestPortalFailureKeepsSession(t *testing.T) {
	needRowsTable(t)
	for _, how := range []string{"cancel", "pause timeout", "context"} {
		t.Run(how, func(t *testing.T) {
			db := openPG(t, DriverName, portalDSN)
			monitor := openPG(t, "postgres", "")
			conn, pid := backend(t, db)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := mustStream(t, WithPauseTimeout(50*time.Millisecond))
			rows, err := conn.QueryContext(ctx, bigQuery, 1_000_000, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, s.Pause())
			var want error
			switch how {
			case "cancel":
				require.NoError(t, s.Cancel())
				want = ErrCanceled
			case "pause timeout":
				want = ErrPauseTimeout
			case "context":
				cancel()
				want = context.Canceled
			}
			// The server's query ends while the consumer is away.
			require.Eventually(t, func() bool {
				state, _, _ := activity(t, monitor, pid)
				return state == "idle"
			}, 5*time.Second, 10*time.Millisecond, "the server should end the query")
			assert.False(t, rows.Next())
			assert.ErrorIs(t, rows.Err(), want)
			_ = rows.Close()
			assert.Equal(t, pid, pidOf(t, conn), "the connection was kept")
			sessionClean(t, conn)
		})
	}
}

// TestPortalEarlyCloseOfWrites: a statement that writes, closed after one
// row, leaves exactly what lib/pq leaves, in every close mode: a portal
// runs such a statement whole at its first Execute, and closing the
// portal commits it.
func TestPortalEarlyCloseOfWrites(t *testing.T) {
	for _, q := range writeStatements {
		t.Run(q, func(t *testing.T) {
			want := tableAfter(t, openPG(t, "postgres", ""), q)
			for _, mode := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
				got := tableAfter(t, openPG(t, DriverName, portalDSN), q, mustStream(t, WithCloseMode(mode)))
				assert.Equal(t, want, got, "%s: the early Close changed what the statement wrote", mode)
			}
		})
	}
}

// TestPortalErrorInTransaction: a query that fails mid-stream inside the
// caller's transaction fails it as through lib/pq: the same error from
// the rows, and from Commit, which lib/pq reads from the transaction
// status the stream changed.
func TestPortalErrorInTransaction(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []any {
		tx, err := db.Begin()
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		rows, err := tx.Query("SELECT 1 / (500 - g) FROM generate_series(1, 1000) g")
		require.NoError(t, err)
		n := 0
		for rows.Next() {
			n++
		}
		rowsErr := rows.Err()
		var pe *pq.Error
		require.ErrorAs(t, rowsErr, &pe)
		_, execErr := tx.Exec("SELECT 1")
		commitErr := tx.Commit()
		return []any{n, pe.Code, rowsErr.Error(), execErr.Error(), commitErr}
	})
}

// TestPortalErrorsAsLibPQ: the server's errors come where lib/pq reports
// them, with the same text (the position lib/pq computes from the query's
// text included): from Query before the first row, from the rows after.
func TestPortalErrorsAsLibPQ(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		var got []string
		for _, q := range []struct {
			text string
			args []any
		}{
			{"SELECT nosuchcolumn FROM generate_series(1, 3)", nil},
			{"SELECT 1 FROM\n  generate_series(1, 3) WHERE nosuch > 1", nil},
			{"SELECT 1/0", nil},
			{"SELECT 1/(g - 1) FROM generate_series(1, 3) g", nil},
			{"SELECT 1/(g - 3) FROM generate_series(1, 5) g", nil},
			{"SELECT $1::int", []any{"x"}},
			{"SELECT $1::int + $2", []any{1}},
			{"SELECT 1/(g - $1) FROM generate_series(1, 5) g", []any{3}},
		} {
			rows, err := db.Query(q.text, q.args...)
			if err != nil {
				got = append(got, "query: "+err.Error())
				continue
			}
			for rows.Next() {
			}
			got = append(got, "rows: "+errString(rows.Err()))
			require.NoError(t, rows.Close())
		}
		return got
	})
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestPortalTimeZoneFromTheStream: a TimeZone set by a portal query
// reaches lib/pq (its ParameterStatus is handed back), and timestamptz
// values decode in it in every mode, as through lib/pq.
func TestPortalTimeZoneFromTheStream(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		db.SetMaxOpenConns(1)
		var set string
		require.NoError(t, db.QueryRow("SELECT set_config('TimeZone', 'America/New_York', false)").Scan(&set))
		var portal, single time.Time
		require.NoError(t, db.QueryRow("SELECT '2024-03-10 12:00:00+00'::timestamptz").Scan(&portal))
		// In single-statement mode, lib/pq decodes it.
		args := []any{}
		if _, ok := db.Driver().(*Driver); ok {
			args = append(args, mustStream(t, WithStreamMode(ModeSingle)))
		}
		require.NoError(t, db.QueryRow("SELECT '2024-03-10 12:00:00+00'::timestamptz", args...).Scan(&single))
		return []string{portal.String(), single.String(), portal.Location().String()}
	})
}

// TestPortalNoticesReachTheHandler: a notice raised while a portal stream
// runs reaches lib/pq's notice handler, as lib/pq passes it.
func TestPortalNoticesReachTheHandler(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE OR REPLACE FUNCTION portal_notice(v int) RETURNS int
		LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'row %', v USING DETAIL = 'detail'; RETURN v; END $$`)
	require.NoError(t, err)
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		conn, err := db.Conn(context.Background())
		require.NoError(t, err)
		defer conn.Close()
		var notices []string
		require.NoError(t, conn.Raw(func(dc any) error {
			inner := dc.(driver.Conn)
			if u, ok := dc.(interface{ Unwrap() driver.Conn }); ok {
				inner = u.Unwrap()
			}
			pq.SetNoticeHandler(inner, func(e *pq.Error) {
				notices = append(notices, e.Error()+"|"+e.Detail+"|"+string(e.Severity))
			})
			return nil
		}))
		rows, err := conn.QueryContext(context.Background(), "SELECT portal_notice(g) FROM generate_series(1, 3) g")
		require.NoError(t, err)
		for rows.Next() {
		}
		require.NoError(t, rows.Err())
		return notices
	})
}

// TestPortalRefusesWhatItCannotRun: under WithStreamMode(ModePortal), a
// text of several statements or a statement that returns no rows through
// a portal fails with ErrPortalQuery, and nothing of it runs.
func TestPortalRefusesWhatItCannotRun(t *testing.T) {
	db := openPG(t, DriverName, portalDSN)
	db.SetMaxOpenConns(1)
	_, err := db.Exec("CREATE TEMP TABLE portal_refused (a int)")
	require.NoError(t, err)
	for _, q := range []string{
		"INSERT INTO portal_refused VALUES (1); SELECT 1",
		"SET work_mem = '1MB'",
		"SELECT 'unsure \\' ; INSERT INTO portal_refused VALUES (2)",
		"SELECT $1",
		"",
	} {
		_, err := db.Query(q)
		require.ErrorIs(t, err, ErrPortalQuery, "%q", q)
	}
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM portal_refused").Scan(&n))
	assert.Zero(t, n, "nothing of a refused query ran")
}

// TestPortalWhilePaused pins what the server does while a portal stream
// is paused (the README's table): the backend waits for the next Execute
// (active, ClientRead); idle_in_transaction_session_timeout does not end
// the session; pg_cancel_backend is ignored; statement_timeout counts the
// pause and fails the stream after it, keeping the session.
func TestPortalWhilePaused(t *testing.T) {
	needRowsTable(t)
	pause := func(t *testing.T, setting string, during func(monitor *sql.DB, pid int)) (n, pid2 int, err error) {
		db := openPG(t, DriverName, portalDSN)
		monitor := openPG(t, "postgres", "")
		conn, pid := backend(t, db)
		ctx := context.Background()
		if setting != "" {
			_, err := conn.ExecContext(ctx, "SET "+setting)
			require.NoError(t, err)
		}
		s := mustStream(t)
		rows, err := conn.QueryContext(ctx, bigQuery, 20_000, s)
		require.NoError(t, err)
		read, _ := inOrder(t, rows)
		read(100)
		require.NoError(t, s.Pause())
		require.Eventually(t, func() bool {
			state, we, _ := activity(t, monitor, pid)
			return state == "active" && we == "ClientRead"
		}, 5*time.Second, 10*time.Millisecond)
		during(monitor, pid)
		require.NoError(t, s.Resume())
		n = 100
		for rows.Next() {
			n++
		}
		err = rows.Err()
		_ = rows.Close()
		return n, pidOf(t, conn), err
	}
	t.Run("idle_in_transaction_session_timeout", func(t *testing.T) {
		n, _, err := pause(t, "idle_in_transaction_session_timeout = '100ms'", func(*sql.DB, int) {
			time.Sleep(400 * time.Millisecond)
		})
		require.NoError(t, err)
		assert.Equal(t, 20_000, n)
	})
	t.Run("pg_cancel_backend", func(t *testing.T) {
		n, _, err := pause(t, "", func(monitor *sql.DB, pid int) {
			var ok bool
			require.NoError(t, monitor.QueryRow("SELECT pg_cancel_backend($1)", pid).Scan(&ok))
			require.True(t, ok)
			time.Sleep(100 * time.Millisecond)
		})
		require.NoError(t, err)
		assert.Equal(t, 20_000, n)
	})
	t.Run("statement_timeout", func(t *testing.T) {
		var before int
		n, after, err := pause(t, "statement_timeout = '200ms'", func(_ *sql.DB, pid int) {
			before = pid
			time.Sleep(500 * time.Millisecond)
		})
		var pe *pq.Error
		require.True(t, errors.As(err, &pe), "%v", err)
		assert.Equal(t, "57014", string(pe.Code))
		assert.Less(t, n, 20_000)
		assert.Equal(t, before, after, "the session survives")
	})
}

// TestPortalFailedWriteAsLibPQ: a statement that writes whose stream fails
// (the context ends after its first row, or Cancel) leaves what lib/pq
// leaves when the same context ends. With a large result (20 MB) lib/pq's
// cancel request reaches its server while it still sends, and stops the
// statement; the portal stream rolls it back. With a small one
// (TestPortalFailedSmallWriteCommits) lib/pq's server sent it all first,
// and the statement committed.
func TestPortalFailedWriteAsLibPQ(t *testing.T) {
	q := writeStatements[0]
	failed := func(t *testing.T, db *sql.DB, args ...any) [2]int64 {
		setup := openPG(t, "postgres", "")
		_, err := setup.Exec(`CREATE TABLE IF NOT EXISTS close_writes (x bigint);
			TRUNCATE close_writes; INSERT INTO close_writes SELECT g FROM generate_series(1, 200000) g`)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		rows, err := db.QueryContext(ctx, q, args...)
		require.NoError(t, err)
		require.True(t, rows.Next())
		cancel()
		for rows.Next() {
		}
		assert.ErrorIs(t, rows.Err(), context.Canceled)
		_ = rows.Close()
		var st [2]int64
		require.NoError(t, setup.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM close_writes").Scan(&st[0], &st[1]))
		return st
	}
	want := failed(t, openPG(t, "postgres", ""))
	got := failed(t, openPG(t, DriverName, portalDSN))
	assert.Equal(t, want, got)
	canceled := func(t *testing.T, db *sql.DB) [2]int64 {
		s := mustStream(t)
		setup := openPG(t, "postgres", "")
		_, err := setup.Exec(`TRUNCATE close_writes; INSERT INTO close_writes SELECT g FROM generate_series(1, 200000) g`)
		require.NoError(t, err)
		rows, err := db.Query(q, s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Cancel())
		_ = rows.Close()
		var st [2]int64
		require.NoError(t, setup.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM close_writes").Scan(&st[0], &st[1]))
		return st
	}
	assert.Equal(t, want, canceled(t, openPG(t, DriverName, portalDSN)), "Cancel: as the context")
}

// TestPortalNotificationsReachLibPQ: a notification the server sends
// during a portal stream (it delivers them before the stream's final
// ReadyForQuery) is handed back to lib/pq, whose notification handler gets
// it by the end of the next statement, as through lib/pq alone.
func TestPortalNotificationsReachLibPQ(t *testing.T) {
	notifier := openPG(t, "postgres", "")
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		var got []string
		require.NoError(t, conn.Raw(func(dc any) error {
			inner := dc.(driver.Conn)
			if u, ok := dc.(interface{ Unwrap() driver.Conn }); ok {
				inner = u.Unwrap()
			}
			pq.SetNotificationHandler(inner, func(n *pq.Notification) {
				got = append(got, n.Channel+":"+n.Extra)
			})
			return nil
		}))
		_, err = conn.ExecContext(ctx, "LISTEN portal_news")
		require.NoError(t, err)
		rows, err := conn.QueryContext(ctx, "SELECT g FROM generate_series(1, 3) g")
		require.NoError(t, err)
		require.True(t, rows.Next())
		_, err = notifier.Exec("NOTIFY portal_news, 'during the stream'")
		require.NoError(t, err)
		for rows.Next() {
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		var one int
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&one))
		return got
	})
}

// TestPortalEarlyCloseIsSilent: ending a read's implicit transaction early
// raises no notice (which the server would also write to its log at every
// early close): the notice handler hears nothing, in and out of a
// transaction block, after a close, a Cancel and a pause timeout.
func TestPortalEarlyCloseIsSilent(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, portalDSN)
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	var notices []string
	require.NoError(t, conn.Raw(func(dc any) error {
		pq.SetNoticeHandler(dc.(interface{ Unwrap() driver.Conn }).Unwrap(), func(e *pq.Error) {
			notices = append(notices, string(e.Severity)+" "+string(e.Code)+" "+e.Message)
		})
		return nil
	}))
	for _, inBlock := range []bool{false, true} {
		if inBlock {
			_, err := conn.ExecContext(ctx, "BEGIN")
			require.NoError(t, err)
		}
		for _, end := range []string{"close", "cancel", "pause timeout"} {
			s := mustStream(t, WithPauseTimeout(20*time.Millisecond))
			rows, err := conn.QueryContext(ctx, bigQuery, 100_000, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			switch end {
			case "cancel":
				require.NoError(t, s.Cancel())
			case "pause timeout":
				require.NoError(t, s.Pause())
			}
			if end != "close" {
				for rows.Next() {
				}
			}
			require.NoError(t, rows.Close())
		}
		if inBlock {
			_, err := conn.ExecContext(ctx, "COMMIT")
			require.NoError(t, err)
		}
	}
	assert.Empty(t, notices)
	sessionClean(t, conn)
}

// TestPortalStatementWithoutRows: a statement that returns no rows, run in
// a portal (ModePortal), gives what lib/pq gives: no columns, no row, and
// its effect.
func TestPortalStatementWithoutRows(t *testing.T) {
	bothIn(t, portalModes[1:], func(t *testing.T, db *sql.DB) []any {
		db.SetMaxOpenConns(1)
		_, err := db.Exec("CREATE TEMP TABLE portal_nodata (a int)")
		require.NoError(t, err)
		var out []any
		for _, args := range [][]any{nil, {7}} {
			q := "INSERT INTO portal_nodata VALUES (1)"
			if args != nil {
				q = "INSERT INTO portal_nodata VALUES ($1)"
			}
			rows, err := db.Query(q, args...)
			require.NoError(t, err)
			cols, err := rows.Columns()
			require.NoError(t, err)
			out = append(out, cols == nil, len(cols), rows.Next(), rows.Err())
			require.NoError(t, rows.Close())
		}
		var sum int
		require.NoError(t, db.QueryRow("SELECT sum(a) FROM portal_nodata").Scan(&sum))
		return append(out, sum)
	})
}

// TestPortalCloseWatchesTheContext: the context ends while Close reads the
// rest without a bound (the batch in flight of a read in the caller's
// transaction, or the whole rest under CloseDrain) and the server is busy
// with it: Close returns within the failed end's bound with the
// context's error, as lib/pq's Close returns once its cancel request went
// out, where it would otherwise wait for the query.
func TestPortalCloseWatchesTheContext(t *testing.T) {
	const query = `SELECT g, CASE WHEN g = 200 THEN pg_sleep(5)::text ELSE repeat('x', 2000) END FROM generate_series(1, 1000) g`
	for _, drv := range []string{"postgres", DriverName} {
		for _, where := range []string{"BeginTx", "CloseDrain", "Exec(BEGIN)"} {
			t.Run(drv+"/"+where, func(t *testing.T) {
				db := openPG(t, drv, "")
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var q interface {
					QueryContext(context.Context, string, ...any) (*sql.Rows, error)
				} = db
				switch where {
				case "Exec(BEGIN)":
					conn, err := db.Conn(context.Background())
					require.NoError(t, err)
					defer conn.Close()
					_, err = conn.ExecContext(context.Background(), "BEGIN")
					require.NoError(t, err)
					q = conn
				case "BeginTx":
					tx, err := db.BeginTx(ctx, nil)
					require.NoError(t, err)
					defer func() { _ = tx.Rollback() }()
					q = tx
				}
				var args []any
				if drv == DriverName && where == "CloseDrain" {
					args = append(args, mustStream(t, WithCloseMode(CloseDrain)))
				}
				rows, err := q.QueryContext(ctx, query, args...)
				require.NoError(t, err)
				for i := 0; i < 120; i++ {
					require.True(t, rows.Next())
				}
				time.AfterFunc(100*time.Millisecond, cancel)
				start := time.Now()
				err = rows.Close()
				took := time.Since(start)
				t.Logf("Close took %v: %v", took.Round(time.Millisecond), err)
				assert.Less(t, took, 3*time.Second, "Close waited out the query after the context ended")
				if drv == DriverName && where == "BeginTx" {
					// lib/pq watches the transaction's context too, and its
					// cancel request may end the query first.
					var pe *pq.Error
					if errors.As(err, &pe) {
						assert.Equal(t, "57014", string(pe.Code))
						return
					}
				}
				assert.ErrorIs(t, err, context.Canceled)
			})
		}
	}
}

// TestPortalFailedSmallWriteCommits: a statement that writes, with a
// result that fits in the socket's buffers, whose stream fails after a
// few rows: lib/pq's server sent the result whole and committed before the
// cancel request came, and the portal stream, which reads the rest
// (within writeRestBytes), commits it too.
func TestPortalFailedSmallWriteCommits(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec("CREATE TABLE IF NOT EXISTS failed_small_write (round bigint, g int)")
	require.NoError(t, err)
	const q = "INSERT INTO failed_small_write SELECT $1::bigint, g FROM generate_series(1, 100) g RETURNING g"
	// written runs q on db, reads 10 rows, fails the stream (the
	// context's cancel, or the Stream's Cancel with cancelStream) and
	// returns how many rows the statement left. On jsonstream it waits for
	// the stream to fail before it reads on, so that the failure, not the
	// end of the result, ends it.
	written := func(t *testing.T, db *sql.DB, cancelStream bool) int {
		round := time.Now().UnixNano()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		args := []any{round}
		var s *Stream
		if _, libpq := db.Driver().(*pq.Driver); !libpq {
			s = mustStream(t)
			args = append(args, s)
		}
		rows, err := db.QueryContext(ctx, q, args...)
		require.NoError(t, err)
		for i := 0; i < 10; i++ {
			require.True(t, rows.Next())
		}
		time.Sleep(50 * time.Millisecond) // lib/pq's server is done with it
		if cancelStream {
			require.NoError(t, s.Cancel())
		} else {
			cancel()
		}
		if s != nil {
			// Failed by jsonstream's watch of the context, or closed by
			// database/sql's, whichever came first: both end it as failed.
			require.Eventually(t, func() bool { st := s.State(); return st == Failed || st == Closed }, 5*time.Second, time.Millisecond)
		}
		for rows.Next() {
		}
		if s != nil {
			assert.Error(t, rows.Err(), "the stream failed")
		}
		_ = rows.Close()
		var n int
		require.NoError(t, setup.QueryRow("SELECT count(*) FROM failed_small_write WHERE round = $1", round).Scan(&n))
		return n
	}
	want := written(t, openPG(t, "postgres", ""), false)
	require.Equal(t, 100, want, "lib/pq commits it")
	portal := openPG(t, DriverName, portalDSN)
	assert.Equal(t, want, written(t, portal, false), "the context")
	assert.Equal(t, want, written(t, portal, true), "Cancel")
}

// TestPortalQueryRowAllocations: a QueryRow that the default mode runs as
// a portal stream allocates no more than lib/pq's, with and without an
// argument, and with a context that can end (allocations per query are
// one of the figures bench/ holds against lib/pq's).
func TestPortalQueryRowAllocations(t *testing.T) {
	for _, q := range []struct {
		name, query string
		args        []any
		cancellable bool
	}{
		{"no argument", "SELECT 1", nil, false},
		{"argument", "SELECT $1::int", []any{7}, false},
		{"argument, a context that can end", "SELECT $1::int", []any{7}, true},
	} {
		t.Run(q.name, func(t *testing.T) {
			ctx := context.Background()
			if q.cancellable {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
			}
			per := map[string]float64{}
			for _, name := range []string{"postgres", DriverName} {
				db := openPG(t, name, "")
				db.SetMaxOpenConns(1)
				var v int
				run := func() {
					if err := db.QueryRowContext(ctx, q.query, q.args...).Scan(&v); err != nil {
						t.Fatal(err)
					}
				}
				run()
				per[name] = testing.AllocsPerRun(200, run)
				if name == DriverName {
					rec := &recorder{}
					s := mustStream(t, WithObserver(rec))
					require.NoError(t, db.QueryRowContext(ctx, q.query, append(q.args, s)...).Scan(&v))
					require.Equal(t, ModePortal, rec.ended(t).Mode, "the default mode runs it as a portal")
				}
			}
			t.Logf("allocations per query: lib/pq %.0f, jsonstream %.0f", per["postgres"], per[DriverName])
			assert.LessOrEqual(t, per[DriverName], per["postgres"])
		})
	}
}

// TestPortalFirstReplyWholeCommitsAtQuery: a result that its first reply
// holds whole (up to portalFirstRows rows) ends its exchange before Query
// returns, as lib/pq's: what the query wrote is committed then, whatever
// the consumer reads of it. A longer result commits at its end, and an
// early Close rolls it back (TestEarlyCloseOfWritingFunction).
func TestPortalFirstReplyWholeCommitsAtQuery(t *testing.T) {
	setup := slowCommitSetup(t)
	db := openPG(t, DriverName, "")
	count := func(round int64) int { return slowCommitted(t, setup, round) }
	const q = "SELECT jsonstream_slow_commit($1, 0) FROM generate_series(1, $2)"
	for _, n := range []int{1, 3, portalFirstRows - 1} {
		round := time.Now().UnixNano()
		rows, err := db.Query(q, round, n)
		require.NoError(t, err)
		assert.Equal(t, n, count(round), "%d rows: not committed when Query returned", n)
		require.NoError(t, rows.Close(), "closed with every row unread")
		assert.Equal(t, n, count(round))
	}

	n := 3 * portalFirstRows
	round := time.Now().UnixNano()
	rows, err := db.Query(q, round, n)
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		require.True(t, rows.Next())
	}
	assert.Zero(t, count(round), "a result past its first batch committed before its end")
	require.False(t, rows.Next())
	require.NoError(t, rows.Err())
	assert.Equal(t, n, count(round), "not committed at its end")

	round = time.Now().UnixNano()
	rows, err = db.Query(q, round, n)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Zero(t, count(round), "an early close of a result past its first batch committed it")
}

// TestPortalWholeReplyEndLost: when the connection fails as a result that
// its first reply held whole ends its exchange (the Sync cannot be sent,
// or its reply does not come), Query still returns the rows, which the
// consumer reads, and the failure comes where the rest is read, as
// without that wait: database/sql never runs the query again, on another
// connection, behind a commit that may have been carried out. Here the
// server never received the Sync: nothing is committed.
func TestPortalWholeReplyEndLost(t *testing.T) {
	setup := slowCommitSetup(t)
	for _, how := range []string{"the socket is closed", "the Sync's write fails, reads go on", "its reply does not come"} {
		t.Run(how, func(t *testing.T) {
			d := &fakeDialer{}
			db := openDialed(t, d)
			require.NoError(t, db.Ping())
			s := d.last()
			dials := d.attempts.Load()
			fail := func(b []byte) {
				if !bytes.Equal(b, []byte{'S', 0, 0, 0, 4}) {
					return
				}
				s.beforeWrite.Store(nil)
				switch how {
				case "the socket is closed":
					_ = s.Conn.Close()
				case "the Sync's write fails, reads go on":
					err := errors.New("write refused")
					s.failWrites.Store(&err)
				default:
					s.stall() // swallows the Sync
					time.AfterFunc(100*time.Millisecond, func() { _ = s.Conn.Close() })
				}
			}
			s.beforeWrite.Store(&fail)
			// A read that waits for a reply that never comes fails the
			// test at the context's end, not the package's.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			round := time.Now().UnixNano()
			rows, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, 0) FROM generate_series(1, 2)", round)
			require.NoError(t, err, "Query reported the end's failure")
			require.Nil(t, s.beforeWrite.Load(), "no Sync went out before the rows")
			for i := 0; i < 2; i++ {
				require.True(t, rows.Next(), "row %d", i)
				var v int64
				require.NoError(t, rows.Scan(&v))
				assert.Equal(t, round, v)
			}
			assert.False(t, rows.Next())
			assert.ErrorIs(t, rows.Err(), driver.ErrBadConn)
			assert.NoError(t, rows.Close())
			assert.Equal(t, dials, d.attempts.Load(), "the query ran again on a new connection")
			assert.Zero(t, slowCommitted(t, setup, round), "committed without its Sync")
		})
	}
}

// TestPortalWholeReplyContextEnded: a query whose context ended before its
// first reply, which held the whole result, was read sends no Sync: Query
// returns the context's error and the cut rolls the query back, as lib/pq's
// cancel request would before the query ended. A context that ends while
// the Sync's ReadyForQuery is awaited bounds that wait; a ReadyForQuery
// that comes within the bound keeps the connection, and the commit
// stands, as lib/pq's does when its cancel request comes too late. A
// notification the commit brought is then handed to lib/pq within a bound
// of its own, so that a link slower than what was left of the context's
// bound keeps the connection too.
func TestPortalWholeReplyContextEnded(t *testing.T) {
	setup := slowCommitSetup(t)
	count := func(round int64) int { return slowCommitted(t, setup, round) }

	t.Run("before the Sync", func(t *testing.T) {
		d := &fakeDialer{}
		db := openDialed(t, d)
		pid := pidOf(t, db)
		s := d.last()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// The context ends as the query goes out: its reply comes within
		// the bound that the end arms.
		end := func(b []byte) {
			if bytes.Contains(b, []byte("jsonstream_slow_commit")) {
				s.beforeWrite.Store(nil)
				cancel()
			}
		}
		s.beforeWrite.Store(&end)
		round := time.Now().UnixNano()
		_, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, 0)", round, mustStream(t, WithDrainTimeout(5*time.Second)))
		assert.ErrorIs(t, err, context.Canceled)
		assert.True(t, s.isClosed(), "the connection was kept")
		require.Eventually(t, func() bool {
			var n int
			return setup.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n) == nil && n == 0
		}, 10*time.Second, 10*time.Millisecond, "the session outlived its cut")
		assert.Zero(t, count(round), "committed though the context had ended")
	})

	t.Run("the commit's reply within the bound", func(t *testing.T) {
		db := openPG(t, DriverName, "")
		db.SetMaxOpenConns(1)
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		const ms = 1500
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2)", round, ms, mustStream(t, WithDrainTimeout(10*time.Second)))
		assert.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, 1, count(round), "the commit's reply came, and no commit")
		assert.Equal(t, pid, pidOf(t, db), "the connection was cut")
	})

	t.Run("a notification handed back after the bound", func(t *testing.T) {
		// Every read takes a while from the Sync on (a slow link): the
		// commit's reply comes within the context's bound, and lib/pq's
		// Ping, which hands it the session's own notification, would not.
		const lag, bound = time.Second, 1500 * time.Millisecond
		ctx := context.Background()
		conn, s, heard := listeningConn(t)
		pid := pidOf(t, conn)
		qctx, cancel := context.WithCancel(ctx)
		defer cancel()
		slow := func(b []byte) {
			if bytes.Equal(b, []byte{'S', 0, 0, 0, 4}) {
				s.beforeWrite.Store(nil)
				s.delay.Store(int64(lag))
				cancel()
			}
		}
		s.beforeWrite.Store(&slow)
		_, err := conn.QueryContext(qctx, "SELECT pg_notify('whole_news', 'x')", mustStream(t, WithDrainTimeout(bound)))
		assert.ErrorIs(t, err, context.Canceled)
		s.delay.Store(0)
		assert.Equal(t, int32(1), heard.Load(), "lib/pq's handler did not hear the notification")
		assert.False(t, s.isClosed(), "the connection was cut")
		assert.Equal(t, pid, pidOf(t, conn), "the connection was not kept")
	})
}

// TestPortalFirstReplySplit: whether a result's exchange ends in Query is
// decided by what has arrived when its first row is read. A first reply
// whose end comes in a later read (split by the network) leaves Query
// without a Sync: nothing is committed yet. Its end, once it has arrived,
// makes the result received whole, and Close commits it, rows left unread
// or not, as it would have in Query (TestPortalFirstReplyWholeCommitsAtQuery).
func TestPortalFirstReplySplit(t *testing.T) {
	setup := slowCommitSetup(t)
	d := &fakeDialer{}
	db := openDialed(t, d)
	require.NoError(t, db.Ping())
	s := d.last()
	split := false
	shape := func(p []byte, n int) int {
		types, ends := serverMessages(p[:n])
		first := bytes.IndexByte(types, 'D')
		if split || first < 0 {
			return n
		}
		split = true
		if ends[first] < n {
			s.holdBack(p[ends[first]:n]) // the next read returns it
		}
		return ends[first]
	}
	s.shape.Store(&shape)
	count := func(round int64) int { return slowCommitted(t, setup, round) }
	round := time.Now().UnixNano()
	rec := &recorder{}
	rows, err := db.Query("SELECT jsonstream_slow_commit($1, 0) FROM generate_series(1, 3)", round, mustStream(t, WithObserver(rec)))
	require.NoError(t, err)
	require.True(t, split, "the reply was not split")
	assert.Zero(t, count(round), "committed in Query, before the reply's end had arrived")
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Equal(t, 3, count(round), "a result received whole was not committed")
	assert.Equal(t, OutcomePortalClosed, rec.ended(t).Outcome, "rows were left unread")
}

// TestPortalWholeReplyFailedEndBounded: a stream that failed keeps the
// bound on its end when the end's ReadyForQuery is already buffered (a
// result its first reply held whole). Ending it hands the notification the
// commit brought back to lib/pq, whose Ping waits for a reply: on a network
// that stopped answering, the bound cuts the connection instead of Close
// waiting as long as TCP does.
func TestPortalWholeReplyFailedEndBounded(t *testing.T) {
	ctx := context.Background()
	conn, s, heard := listeningConn(t)
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The session hears its own notification as its implicit transaction
	// commits: between the CommandComplete and the ReadyForQuery.
	s.recording.Store(true)
	rows, err := conn.QueryContext(qctx, "SELECT pg_notify('whole_news', 'x')")
	require.NoError(t, err)
	s.mu.Lock()
	synced := bytes.HasSuffix(s.written, []byte{'S', 0, 0, 0, 4})
	s.mu.Unlock()
	require.True(t, synced, "the first reply's exchange did not end in Query")
	s.stall()
	cancel() // the stream fails: its end is bounded
	closed := make(chan error, 1)
	go func() { closed <- rows.Close() }()
	select {
	case err = <-closed:
	case <-time.After(10 * time.Second):
		_ = s.Conn.Close() // lets the end return, and the test end
		t.Fatalf("the failed stream's end waited without a bound (Close then returned %v)", <-closed)
	}
	// Close returns what the end found, and its context's error is
	// database/sql's to report when its watch closed the rows first.
	if err != nil {
		assert.ErrorIs(t, err, context.Canceled)
	}
	assert.Equal(t, int32(1), heard.Load(), "lib/pq's handler did not hear the notification")
	assert.True(t, s.isClosed(), "the connection that stopped answering was kept")
}

// listeningConn is a connection dialed through a fakeSock (returned) that
// ran LISTEN whole_news, with a lib/pq notification handler that counts
// what it hears.
func listeningConn(t *testing.T) (*sql.Conn, *fakeSock, *atomic.Int32) {
	t.Helper()
	d := &fakeDialer{}
	db := openDialed(t, d)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	heard := new(atomic.Int32)
	require.NoError(t, conn.Raw(func(dc any) error {
		pq.SetNotificationHandler(dc.(interface{ Unwrap() driver.Conn }).Unwrap(), func(*pq.Notification) {
			heard.Add(1)
		})
		return nil
	}))
	_, err = conn.ExecContext(context.Background(), "LISTEN whole_news")
	require.NoError(t, err)
	return conn, d.last(), heard
}

// TestPortalStmtArgumentCount: a prepared statement run with another
// count of arguments than it takes, which database/sql refuses first but
// a caller of the driver may not, fails with lib/pq's error, never a
// panic, before and after the statement was described on the connection.
func TestPortalStmtArgumentCount(t *testing.T) {
	db := openPG(t, DriverName, portalDSN)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Raw(func(dc any) error {
		st, err := dc.(driver.ConnPrepareContext).PrepareContext(context.Background(), "SELECT $1::int")
		require.NoError(t, err)
		defer st.Close()
		q := st.(driver.StmtQueryContext)
		run := func(args ...driver.NamedValue) error {
			rows, err := q.QueryContext(context.Background(), args)
			if err == nil {
				err = rows.Close()
			}
			return err
		}
		one := driver.NamedValue{Ordinal: 1, Value: int64(1)}
		two := driver.NamedValue{Ordinal: 2, Value: int64(2)}
		assert.EqualError(t, run(one, two), "pq: got 2 parameters but the statement requires 1", "before its first use")
		require.NoError(t, run(one))
		assert.EqualError(t, run(one, two), "pq: got 2 parameters but the statement requires 1", "once described")
		require.NoError(t, run(one), "the connection after the error")
		return nil
	}))
}
