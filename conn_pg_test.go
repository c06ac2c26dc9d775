package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestStreamClaimedBeforeSend: of two queries that reach one Stream at
// once, the loser fails before it is sent. The winner's INSERT waits on a
// lock; the loser must fail while the lock is still held, and its INSERT
// never runs.
func TestStreamClaimedBeforeSend(t *testing.T) {
	holder := openPG(t, "postgres", "")
	_, err := holder.Exec("CREATE TABLE IF NOT EXISTS claim_race (n int); TRUNCATE claim_race")
	require.NoError(t, err)
	db := openPG(t, DriverName, "")
	for _, how := range []string{"context", "argument"} {
		t.Run(how, func(t *testing.T) {
			_, err := holder.Exec("TRUNCATE claim_race")
			require.NoError(t, err)
			tx, err := holder.Begin()
			require.NoError(t, err)
			t.Cleanup(func() { _ = tx.Rollback() }) // a failed run must not leave the lock
			_, err = tx.Exec("LOCK TABLE claim_race IN ACCESS EXCLUSIVE MODE")
			require.NoError(t, err)

			s := mustStream(t)
			query := func(n int) (*sql.Rows, error) {
				q := "INSERT INTO claim_race VALUES ($1) RETURNING n"
				if how == "context" {
					return db.QueryContext(ContextWithStream(context.Background(), s), q, n)
				}
				return db.Query(q, n, s)
			}
			winner := make(chan error, 1)
			go func() {
				rows, err := query(1)
				if err == nil {
					for rows.Next() {
					}
					err = rows.Close()
				}
				winner <- err
			}()
			require.Eventually(t, func() bool {
				var waiting int
				require.NoError(t, holder.QueryRow(`SELECT count(*) FROM pg_stat_activity
					WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO claim_race%'`).Scan(&waiting))
				return waiting == 1
			}, 5*time.Second, 5*time.Millisecond, "the winner waits on the lock")

			loser := make(chan error, 1)
			go func() {
				rows, err := query(2)
				if err == nil {
					_ = rows.Close()
				}
				loser <- err
			}()
			select {
			case err := <-loser:
				assert.ErrorIs(t, err, ErrStreamArgument)
			case <-time.After(5 * time.Second):
				t.Fatal("the loser was sent: it waits on the lock too")
			}
			require.NoError(t, tx.Rollback())
			require.NoError(t, <-winner)
			var ns []int
			rows, err := holder.Query("SELECT n FROM claim_race ORDER BY n")
			require.NoError(t, err)
			for rows.Next() {
				var n int
				require.NoError(t, rows.Scan(&n))
				ns = append(ns, n)
			}
			require.NoError(t, rows.Err())
			assert.Equal(t, []int{1}, ns, "only the winner's INSERT ran")
		})
	}
}

// dialCountingDB is a jsonstream pool of one connection whose dials are
// counted: lib/pq sends a cancel request on a connection of its own,
// through the same dialer.
func dialCountingDB(t *testing.T, opts ...Option) (*sql.DB, *fakeDialer) {
	t.Helper()
	pc, err := pq.NewConnector(pgtest.DSN(t))
	require.NoError(t, err)
	c, err := NewConnector(pc, opts...)
	require.NoError(t, err)
	fd := &fakeDialer{}
	pc.Dialer(NewDialer(fd))
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	return db, fd
}

// TestContextEndIsACut: in the single-statement mode the end of the
// query's context cuts the connection, every time, and sends no cancel
// request: lib/pq never sees the context. Before the rows come, Query
// returns the context's error.
func TestContextEndIsACut(t *testing.T) {
	needRowsTable(t)
	rec := &recorder{}
	db, fd := dialCountingDB(t, WithObserver(rec))
	t.Run("while streaming", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			require.NoError(t, db.Ping())
			dials := fd.count()
			ctx, cancel := context.WithCancel(context.Background())
			rows, err := db.QueryContext(ctx, bigQuery, bigRows)
			require.NoError(t, err)
			require.True(t, rows.Next())
			cancel()
			for rows.Next() {
			}
			assert.ErrorIs(t, rows.Err(), context.Canceled)
			require.NoError(t, rows.Close())
			assert.Equal(t, dials, fd.count(), "a cancel request was sent")
			end := rec.ended(t)
			assert.True(t, end.ConnCut, "round %d", i)
			assert.Equal(t, OutcomeContext, end.Outcome)
		}
	})
	t.Run("before the rows", func(t *testing.T) {
		require.NoError(t, db.Ping())
		dials := fd.count()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := db.QueryContext(ctx, "SELECT pg_sleep(3)")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 2*time.Second)
		assert.Equal(t, dials, fd.count(), "a cancel request was sent")
		var one int
		require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool replaces the cut connection")
	})
}

// TestContextEndRollsBackAWrite: the context of a statement that writes
// goes to lib/pq, whose cancel request makes the server roll it back; a
// cut alone would let it commit once the server finished, since it sees
// a closed connection only when it next writes. The same outcome and
// error as through lib/pq.
func TestContextEndRollsBackAWrite(t *testing.T) {
	admin := openPG(t, "postgres", "")
	_, err := admin.Exec("CREATE TABLE IF NOT EXISTS ctx_write (d text); TRUNCATE ctx_write")
	require.NoError(t, err)
	codes := map[string]string{}
	for _, name := range []string{"postgres", DriverName} {
		db := openPG(t, name, "")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		rows, err := db.QueryContext(ctx, "INSERT INTO ctx_write SELECT $1 FROM pg_sleep(1) RETURNING d", name)
		if err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			_ = rows.Close()
		}
		cancel()
		require.Error(t, err, name)
		codes[name] = sqlState(err)
	}
	assert.Equal(t, codes["postgres"], codes[DriverName], "the error differs from lib/pq's")
	require.Eventually(t, func() bool {
		var active int
		require.NoError(t, admin.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE query LIKE 'INSERT INTO ctx_write%' AND state = 'active'`).Scan(&active))
		return active == 0
	}, 5*time.Second, 10*time.Millisecond)
	var n int
	require.NoError(t, admin.QueryRow("SELECT count(*) FROM ctx_write").Scan(&n))
	assert.Zero(t, n, "a write whose query failed by its context committed")
}
