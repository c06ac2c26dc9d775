package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowCommitSetup makes jsonstream_slow_commit(round, ms), a function
// whose row is inserted at once and whose commit then takes ms
// milliseconds (a deferred constraint trigger sleeps): a QueryRow of it is
// read whole in the first batch, and its Sync's ReadyForQuery comes ms
// later.
func slowCommitSetup(t *testing.T) *sql.DB {
	t.Helper()
	setup := openPG(t, "postgres", "")
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS jsonstream_slow_commit (round bigint, ms int)",
		`CREATE OR REPLACE FUNCTION jsonstream_slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS
		 $$ BEGIN PERFORM pg_sleep(NEW.ms / 1000.0); RETURN NULL; END $$`,
		"DROP TRIGGER IF EXISTS jsonstream_slow_commit_sleep ON jsonstream_slow_commit",
		`CREATE CONSTRAINT TRIGGER jsonstream_slow_commit_sleep AFTER INSERT ON jsonstream_slow_commit
		 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION jsonstream_slow_commit_sleep()`,
		`CREATE OR REPLACE FUNCTION jsonstream_slow_commit(round bigint, ms int) RETURNS bigint LANGUAGE sql AS
		 $$ INSERT INTO jsonstream_slow_commit VALUES (round, ms) RETURNING round $$`,
	} {
		_, err := setup.Exec(stmt)
		require.NoError(t, err, stmt)
	}
	return setup
}

// slowCommitted returns how many of round's rows in jsonstream_slow_commit
// are committed, as setup sees them.
func slowCommitted(t *testing.T, setup *sql.DB, round int64) int {
	t.Helper()
	var n int
	require.NoError(t, setup.QueryRow("SELECT count(*) FROM jsonstream_slow_commit WHERE round = $1", round).Scan(&n))
	return n
}

// TestPortalWholeResultEnd: a result read whole waits for its Sync's
// ReadyForQuery (the implicit transaction's commit) without a bound of its
// own, as lib/pq does, also when its context can end: a commit that takes
// longer than any bound of jsonstream's commits, and the connection stays.
// A result its first reply held whole waits in Query (syncWhole); one that
// only Close finds whole, in Close. When the context ends during the wait,
// the wait gets the bound of a failed end and the connection is cut: Query
// or Close returns the context's error, and a stream does not count as
// read whole. The server carries the commit out whatever the client does.
func TestPortalWholeResultEnd(t *testing.T) {
	setup := slowCommitSetup(t)
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	// committed waits for round's want rows to be committed: the server
	// commits once the triggers' sleep is over, after a cut too.
	committed := func(round int64, want int) bool {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			if err := setup.QueryRow("SELECT count(*) FROM jsonstream_slow_commit WHERE round = $1", round).Scan(&n); err == nil && n == want {
				return true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}

	t.Run("the context stays", func(t *testing.T) {
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		ms := int(cursorEndTimeout/time.Millisecond) + 500 // longer than any bound the end may have
		rec := &recorder{}
		var got int64
		require.NoError(t, db.QueryRowContext(ctx, "SELECT jsonstream_slow_commit($1, $2)", round, ms, mustStream(t, WithObserver(rec))).Scan(&got))
		assert.Equal(t, round, got)
		ev := rec.ended(t)
		assert.Equal(t, ModePortal, ev.Mode)
		assert.Equal(t, OutcomeComplete, ev.Outcome, "read whole")
		assert.False(t, ev.ConnCut)
		assert.True(t, committed(round, 1))
		assert.Equal(t, pid, pidOf(t, db), "the connection was cut")
	})

	t.Run("found whole by Close", func(t *testing.T) {
		// 16 rows fill the first batch, which the server ends with
		// PortalSuspended: only Close learns, from the next Execute's
		// "SELECT 0", that the result was whole. Each row's trigger sleeps
		// at the commit.
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		each := int(cursorEndTimeout/time.Millisecond)/portalFirstRows + 50
		rec := &recorder{}
		rows, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2) FROM generate_series(1, $3)",
			round, each, portalFirstRows, mustStream(t, WithObserver(rec)))
		require.NoError(t, err)
		for i := 0; i < portalFirstRows; i++ {
			require.True(t, rows.Next())
		}
		require.NoError(t, rows.Close())
		ev := rec.ended(t)
		assert.Equal(t, OutcomeComplete, ev.Outcome, "read whole")
		assert.False(t, ev.ConnCut)
		assert.Equal(t, pid, pidOf(t, db), "the connection was cut")
		assert.Equal(t, portalFirstRows, slowCommitted(t, setup, round), "committed when Close returned")
	})

	t.Run("the context ends in Query", func(t *testing.T) {
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		const ms = 4000
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		_, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2)", round, ms)
		took := time.Since(start)
		assert.ErrorIs(t, err, context.Canceled, "Query reported the commit's reply")
		assert.Less(t, took, ms*time.Millisecond/2, "Query waited for the commit")
		assert.NotEqual(t, pid, pidOf(t, db), "the connection was kept, in the middle of the commit")
		assert.True(t, committed(round, 1), "the server commits what it was asked to")
	})

	t.Run("the context ends in Close", func(t *testing.T) {
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		const ms = 4000
		rec := &recorder{}
		rows, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2) FROM generate_series(1, $3)",
			round, ms/portalFirstRows, portalFirstRows, mustStream(t, WithObserver(rec)))
		require.NoError(t, err)
		for i := 0; i < portalFirstRows; i++ {
			require.True(t, rows.Next())
		}
		// Close waits for the commit's reply; the context ends meanwhile.
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		closeErr := rows.Close()
		took := time.Since(start)
		assert.ErrorIs(t, closeErr, context.Canceled, "Close reported the commit's reply")
		assert.Less(t, took, ms*time.Millisecond/2, "the end waited for the commit")
		ev := rec.ended(t)
		assert.NotEqual(t, OutcomeComplete, ev.Outcome, "the stream counts as whole without its commit's reply")
		assert.True(t, ev.ConnCut)
		assert.NotEqual(t, pid, pidOf(t, db), "the connection was kept, in the middle of the commit")
		assert.True(t, committed(round, portalFirstRows), "the server commits what it was asked to")
	})
}

// TestPortalContextEndBeforeRowsOpen: a context that ends after the
// query's first row came and before its rows are open (queryWatch's
// binding phase) fails the stream as soon as they are: its Next returns
// the context's error. The driver's rows are read directly, without
// database/sql's own watch of the context.
func TestPortalContextEndBeforeRowsOpen(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	portalStarted = func(p *portal) {
		cancel()
		require.Eventually(t, p.watch.ended, 5*time.Second, time.Millisecond, "the watch did not run")
	}
	t.Cleanup(func() { portalStarted = nil })
	require.NoError(t, pinnedConn(t, db).Raw(func(dc any) error {
		ir, err := dc.(*conn).QueryContext(ctx, "SELECT g FROM jsonstream_test_rows WHERE g <= 100000 ORDER BY g", nil)
		require.NoError(t, err, "the query's reply came before its context ended")
		portalStarted = nil
		r := ir.(*rows)
		require.Eventually(t, func() bool { return r.state.load() == Failed }, 5*time.Second, time.Millisecond, "the stream did not fail")
		dest := make([]driver.Value, 1)
		assert.ErrorIs(t, r.Next(dest), context.Canceled)
		return r.Close()
	}))
}

// TestPortalContextEndAsCloseBegins: a context that ends after a portal's
// end looked at it and before the end watches it (its query's watch ran,
// in the closing phase, with nothing yet to bound) still bounds the end's
// reads that have no bound of their own: the end watches from then on and
// bounds them at once (portal.watchFromNow). Without that, the end waits
// for the server as long as it takes.
func TestPortalContextEndAsCloseBegins(t *testing.T) {
	// endAsCloseBegins ends ctx with cancel as the portal's end begins,
	// and waits for its query's watch to have run.
	endAsCloseBegins := func(t *testing.T, cancel context.CancelFunc) {
		portalEnding = func(p *portal) {
			portalEnding = nil
			cancel()
			require.Eventually(t, p.watch.ended, 5*time.Second, time.Millisecond, "the watch did not run")
		}
		t.Cleanup(func() { portalEnding = nil })
	}
	const ms = 4000 // the server's wait, which the end must not sit out

	t.Run("whole result, its commit", func(t *testing.T) {
		slowCommitSetup(t)
		db := openPG(t, DriverName, "")
		db.SetMaxOpenConns(1)
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := &recorder{}
		// A first batch full: Close finds the result whole (see
		// TestPortalWholeResultEnd).
		rows, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2) FROM generate_series(1, $3)",
			time.Now().UnixNano(), ms/portalFirstRows, portalFirstRows, mustStream(t, WithObserver(rec)))
		require.NoError(t, err)
		for i := 0; i < portalFirstRows; i++ {
			require.True(t, rows.Next())
		}
		endAsCloseBegins(t, cancel)
		start := time.Now()
		closeErr := rows.Close()
		assert.Less(t, time.Since(start), ms*time.Millisecond/2, "the end waited for the commit")
		assert.ErrorIs(t, closeErr, context.Canceled)
		assert.True(t, rec.ended(t).ConnCut)
		assert.NotEqual(t, pid, pidOf(t, db), "the connection was kept, in the middle of the commit")
	})

	t.Run("the rest, under CloseDrain", func(t *testing.T) {
		db := openPG(t, DriverName, "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := &recorder{}
		rows, err := db.QueryContext(ctx, fmt.Sprintf(
			"SELECT g FROM generate_series(1, 1000) g WHERE g < 1000 OR (SELECT g > 0 FROM pg_sleep(%d))", ms/1000),
			mustStream(t, WithObserver(rec), WithCloseMode(CloseDrain)))
		require.NoError(t, err)
		require.True(t, rows.Next())
		endAsCloseBegins(t, cancel)
		start := time.Now()
		closeErr := rows.Close()
		assert.Less(t, time.Since(start), ms*time.Millisecond/2, "the end read the rest to its end")
		assert.ErrorIs(t, closeErr, context.Canceled)
		ev := rec.ended(t)
		assert.Equal(t, ModePortal, ev.Mode)
		assert.True(t, ev.ConnCut)
	})
}
